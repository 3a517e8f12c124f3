//! The allocator's settings for a long-running `gateway serve`. The binary (and the benchmarks that
//! measure what it holds) install mimalloc as the global allocator; these set its options. They are
//! the crate's only `unsafe` code (`unsafe_code` is `deny`, allowed on these two functions).

/// Both settings, as `gateway serve` wants them. One-shot commands (`check`, `test`, ...) skip them:
/// they exit soon, and returning memory would only cost them time.
pub fn tune_for_serving() {
    return_freed_memory();
    no_huge_pages();
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (`libmimalloc-sys` names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at once rather than after a delay that only passes while
/// the freeing thread keeps allocating: the AST of a large rules file and the set a reload replaced
/// no longer stay resident in a thread that has gone idle (100,000 rules: 238 MiB steady instead of
/// 400–650 MiB). `MIMALLOC_PURGE_DELAY` in the environment still decides when it is set.
#[allow(unsafe_code)]
pub fn return_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// Transparent huge pages off for the process: with memory returned at once, each page taken again
/// would otherwise be faulted in as a whole 2 MiB page and cleared on the request path
/// (docs/performance.md). `MIMALLOC_ALLOW_THP` in the environment leaves the choice to mimalloc.
#[allow(unsafe_code)]
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: `PR_SET_THP_DISABLE` takes plain integers and touches no memory of ours. A kernel
        // without it refuses with EINVAL, which changes nothing.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0) };
    }
}
