//! Reading files from the outside world safely: regular files only (a FIFO or device at a path must
//! not block a reload), at most a given size, and IO errors as message fragments users read.

use std::io::Read;
use std::path::Path;

/// The start of the reason given for a path that is not a regular file.
pub(crate) const NOT_REGULAR: &str = "not a regular file";

/// Reads a regular file, at most `limit + 1` bytes (so the caller can report the size without reading
/// gigabytes). Anything else at the path (a FIFO, a device, a socket, a directory) is refused without
/// being opened for reading: `stat` first, then open non-blocking and check the opened file with
/// `fstat`, in case the path was replaced in between.
pub(crate) fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    regular(&std::fs::metadata(path)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    regular(&file.metadata()?)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn regular(meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    };
    Err(std::io::Error::other(format!("{NOT_REGULAR} ({what})")))
}

/// An IO error as a message fragment: lowercase, without the `(os error N)` suffix.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    text.to_lowercase()
}
