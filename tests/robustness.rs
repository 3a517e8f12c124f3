//! Malformed rules files of every kind get diagnostics, never a panic or a hang.

use hookgate::compile::PlaceholderSecrets;
use hookgate::diagnostic::Severity;
use hookgate::load::{self, Loaded};

fn load(bytes: &[u8]) -> Loaded {
    load::load_text("fuzz.hook", None, bytes, &PlaceholderSecrets)
}

/// Loads `bytes`, which must fail with at least one error diagnostic whose code is `code`, and which
/// renders (spans inside the text).
fn assert_error(bytes: &[u8], code: &str) {
    let loaded = load(bytes);
    let diags = loaded
        .result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("expected `{code}`, got success"));
    assert!(diags.count(Severity::Error) > 0);
    let codes: Vec<&str> = diags.iter().map(|d| d.kind.code()).collect();
    assert!(codes.contains(&code), "expected `{code}`, got {codes:?}");
    let rendered = diags.render(&loaded.files, false);
    assert!(rendered.contains(code));
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn binary_garbage() {
    let mut rng = Rng(0x5eed);
    for len in [1, 7, 64, 1000, 100_000] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let loaded = load(&bytes);
            assert!(len < 64 || loaded.result.is_err(), "random bytes compiled");
        }
    }
    assert_error(b"\x00\x01\x02", "rules::syntax");
    assert_error(b"secret a = env(\"A\")\n\xff\xfe", "rules::not_utf8");
}

#[test]
fn unterminated_constructs() {
    let cases: &[&str] = &[
        "secret a = env(\"A",
        "secret a = env(\"A\"",
        "source s: github {",
        "source s: github { secret a",
        "rule \"r",
        "rule \"r\" { from s when $.a matches /abc",
        "rule \"r\" { from s when $.a matches /abc\\/",
        "rule \"r\" { from s when payload contains {\"a\": [1, 2",
        "rule \"r\" { from s when payload contains {\"a\": ",
        "rule \"r\" { from s when $.a[?@.b == 'x",
        "rule \"r\" { from s when $.a[",
        "rule \"r\" { from s when ($.a == 1",
        "rule \"r\" { from s notify t {\"k\": \"${$.a",
        "rule \"r\" { from s notify t {\"k\": \"${",
        "rule \"r\" { from s when $.a == \"\\u12",
        "target t { post \"http://x\" retry 3 backoff 1s..",
        "test \"t\" { payload file(\"x",
        "include \"",
    ];
    for case in cases {
        let loaded = load(case.as_bytes());
        let diags = loaded.result.as_ref().expect_err(case);
        assert_eq!(
            diags.iter().next().unwrap().kind.code(),
            "rules::syntax",
            "{case}"
        );
        // The span lies inside the text (miette would panic on a span past the end).
        let d = diags.iter().next().unwrap();
        let json = d.to_json(&loaded.files);
        assert!(json.line >= 1 && json.column >= 1, "{case}");
        diags.render(&loaded.files, false);
    }
}

#[test]
fn a_megabyte_of_nesting() {
    const N: usize = 1 << 20;
    let wrap = |prefix: &str, open: &str, suffix: &str| {
        format!("{prefix}{}{suffix}", open.repeat(N / open.len()))
    };
    let rule =
        "secret a = env(\"A\")\nsource s: github { secret a }\ntarget t { post \"http://x\" }\n";
    let deep: Vec<String> = vec![
        wrap(
            &format!("{rule}rule \"r\" {{ from s when "),
            "(",
            "$.a == 1",
        ),
        wrap(&format!("{rule}rule \"r\" {{ from s when $.a == "), "[", ""),
        wrap(
            &format!("{rule}rule \"r\" {{ from s when payload contains "),
            "{\"a\":",
            "",
        ),
        wrap(&format!("{rule}rule \"r\" {{ from s when "), "$[", ""),
        wrap(&format!("{rule}rule \"r\" {{ from s notify t "), "[", ""),
        wrap("", "{", ""),
    ];
    for text in &deep {
        assert_error(text.as_bytes(), "rules::too_deep");
    }
    // Inside strings, brackets are text; an interpolated path nests inside the string, and must be
    // caught too.
    let in_string = wrap(
        &format!("{rule}rule \"r\" {{ from s notify t {{\"k\": \"${{"),
        "$[",
        "",
    );
    let loaded = load(in_string.as_bytes());
    assert!(loaded.result.is_err());
}

#[test]
fn a_megabyte_of_flat_input() {
    const N: usize = 1 << 20;
    let rule =
        "secret a = env(\"A\")\nsource s: github { secret a }\ntarget t { post \"http://x\" }\n";
    // `not` does not nest brackets, so it must not recurse per keyword.
    let nots = format!(
        "{rule}rule \"r\" {{ from s when {}$.a == 1 notify t }}\n",
        "not ".repeat(N / 4)
    );
    let loaded = load(nots.as_bytes());
    assert!(loaded.result.is_ok(), "{:?}", loaded.result.err());
    // A very long `and` chain and a very long path are fine too.
    let ands = format!(
        "{rule}rule \"r\" {{ from s when $.a == 1{} notify t }}\n",
        " and $.a == 1".repeat(N / 13)
    );
    assert!(load(ands.as_bytes()).result.is_ok());
    let path = format!(
        "{rule}rule \"r\" {{ from s when $.a{} exists notify t }}\n",
        ".a".repeat(N / 2)
    );
    assert!(load(path.as_bytes()).result.is_ok());
    // A megabyte-long line of one word.
    assert_error("x".repeat(N).as_bytes(), "rules::syntax");
    // A megabyte of comment parses, and declares no source.
    assert_error(
        format!("# {}", "comment ".repeat(N / 8)).as_bytes(),
        "rules::no_sources",
    );
}

/// Syntax errors are reported per declaration: a megabyte of broken declarations (with brackets in
/// strings, regexes and comments, and blocks left open) gets a bounded list of errors, in order, each
/// with a span inside the text, promptly.
#[test]
fn a_megabyte_of_broken_declarations() {
    const N: usize = 1 << 20;
    let broken: &[&str] = &[
        "rule \"r\" { from s when $.a == \"{\" and $.b matches /[(/ notfy t }\n",
        "rule \"r\" {\n  from s # {\n  notify t {\"a\": [1]\n  when $.a == 1\n}}\n",
        "source s github { secret a }\n",
        "target t { post \"http://x\" retry 3 backof 1s..5m }\n",
        "  secret a = env(\"A\") }}}\n",
        "test \"t\" { source s payload [1, 2,] expect matched [] oops }\n",
        "rule\n",
        "rule \"r\" { from s notify t [1,] }\n",
    ];
    for unit in broken {
        let text = unit.repeat(N / unit.len());
        let loaded = promptly(move || load(text.as_bytes()));
        let diags = loaded.result.as_ref().expect_err(unit);
        let codes: Vec<&str> = diags.iter().map(|d| d.kind.code()).collect();
        assert!(
            codes.iter().all(|c| *c == "rules::syntax"),
            "{unit}: {codes:?}"
        );
        assert!(
            codes.len() > 1 && codes.len() <= 200,
            "{unit}: {}",
            codes.len()
        );
        let at: Vec<(usize, usize)> = diags
            .iter()
            .map(|d| {
                let json = d.to_json(&loaded.files);
                (json.line, json.column)
            })
            .collect();
        assert!(at.is_sorted(), "{unit}");
        assert!(at.iter().all(|&(l, c)| l >= 1 && c >= 1), "{unit}");
        diags.render(&loaded.files, false);
    }
    // One long declaration broken at its end, then a long run of good ones: one error, read once.
    let rule =
        "secret a = env(\"A\")\nsource s: github { secret a }\ntarget t { post \"http://x\" }\n";
    let text = format!(
        "{rule}rule \"r\" {{ from s when {}$.a == 1 notfy t }}\n{}",
        "not ".repeat(N / 8),
        "rule \"q\" { from s notify t }\n".repeat(N / 60)
    );
    let loaded = promptly(move || load(text.as_bytes()));
    let diags = loaded.result.as_ref().unwrap_err();
    assert_eq!(diags.len(), 1);
    assert!(
        diags
            .iter()
            .next()
            .unwrap()
            .kind
            .to_string()
            .contains("`notfy`")
    );
}

/// An empty, white-space-only or comment-only file, or one with targets but no source, would answer
/// every request 404: an error, whatever else is in it.
#[test]
fn rules_without_sources_are_an_error() {
    for text in [
        "",
        " ",
        "\n\n\t  \r\n",
        "# nothing yet\n",
        "target t { post \"http://127.0.0.1:9/\" }\n",
        "secret s = env(\"S\")\n",
    ] {
        assert_error(text.as_bytes(), "rules::no_sources");
        let loaded = load(text.as_bytes());
        let d = loaded.result.as_ref().unwrap_err().iter().next().unwrap();
        let json = d.to_json(&loaded.files);
        assert_eq!((json.line, json.column), (1, 1), "{text:?}");
        assert!(json.help.is_some());
    }
    // One source anywhere, the root or an include, is enough.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.inc"),
        "secret s = env(\"S\")\nsource s: github { secret s }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("rules.hook"), "include \"a.inc\"\n").unwrap();
    let loaded = load::load_file(&dir.path().join("rules.hook"), &PlaceholderSecrets).unwrap();
    let codes: Vec<&str> = match &loaded.result {
        Ok(c) => c.warnings.iter().map(|d| d.kind.code()).collect(),
        Err(d) => d.iter().map(|d| d.kind.code()).collect(),
    };
    assert!(!codes.contains(&"rules::no_sources"), "{codes:?}");
}

/// A tolerance of exactly one hour is accepted; anything above is an error.
#[test]
fn tolerance_is_at_most_an_hour() {
    let rules = |t: &str| {
        format!(
            "secret s = env(\"S\")\nsource c: slack {{ secret s tolerance {t} }}\nrule \"r\" {{ from c }}\n"
        )
    };
    for ok in ["1h", "60m", "5m", "59m59s"] {
        assert!(load(rules(ok).as_bytes()).result.is_ok(), "{ok}");
    }
    for bad in ["1h1s", "2h", "1d", "3601s"] {
        assert_error(rules(bad).as_bytes(), "rules::invalid_value");
    }
}

fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `f` on another thread and fails the test if it does not finish within 10 s (a FIFO opened
/// for reading blocks until a writer comes, which here is never).
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("blocked on a FIFO")
}

/// A FIFO where a rules file, an include or a secret file should be is refused, not waited on.
#[test]
fn fifos_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rules.hook");
    mkfifo(&root);
    let r = root.clone();
    let err = promptly(move || load::load_file(&r, &PlaceholderSecrets).unwrap_err());
    assert!(
        err.to_string()
            .ends_with("not a regular file (a named pipe)"),
        "{err}"
    );
    assert!(err.help().is_some());

    std::fs::remove_file(&root).unwrap();
    mkfifo(&dir.path().join("team.inc"));
    std::fs::write(
        &root,
        "secret s = env(\"S\")\nsource s: github { secret s }\ninclude \"team.inc\"\n",
    )
    .unwrap();
    let r = root.clone();
    let loaded = promptly(move || load::load_file(&r, &PlaceholderSecrets).unwrap());
    let diags = loaded.result.as_ref().unwrap_err();
    let text = diags.render(&loaded.files, false);
    assert!(text.contains("rules::include_failed"), "{text}");
    assert!(text.contains("not a regular file (a named pipe)"), "{text}");

    // Matched by a glob, too.
    std::fs::write(
        &root,
        "secret s = env(\"S\")\nsource s: github { secret s }\ninclude \"*.inc\"\n",
    )
    .unwrap();
    let r = root.clone();
    let loaded = promptly(move || load::load_file(&r, &PlaceholderSecrets).unwrap());
    let text = loaded
        .result
        .as_ref()
        .unwrap_err()
        .render(&loaded.files, false);
    assert!(text.contains("not a regular file (a named pipe)"), "{text}");

    let secret = dir.path().join("secret");
    mkfifo(&secret);
    std::fs::write(
        &root,
        format!(
            "secret s = file(\"{}\")\nsource s: github {{ secret s }}\n",
            secret.display()
        ),
    )
    .unwrap();
    let r = root.clone();
    let loaded = promptly(move || {
        load::load_file(&r, &hookgate::secrets::EnvSecrets { lenient: false }).unwrap()
    });
    let d = loaded.result.as_ref().unwrap_err().iter().next().unwrap();
    assert_eq!(d.kind.code(), "rules::secret_unavailable");
    assert!(
        d.kind
            .to_string()
            .ends_with("not a regular file (a named pipe)"),
        "{}",
        d.kind
    );
}

#[test]
fn mutations_of_the_example_never_panic() {
    let example = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/rules.example")).unwrap();
    let tokens: &[&[u8]] = &[
        b"{",
        b"}",
        b"(",
        b")",
        b"[",
        b"]",
        b"\"",
        b"/",
        b"$",
        b"$.",
        b"${",
        b"\\",
        b",",
        b":",
        b"=",
        b"..",
        b"not ",
        b"and ",
        b"or ",
        b"all ",
        b"in ",
        b"==",
        b"<",
        b"contains ",
        b"matches /",
        b"secret ",
        b"source ",
        b"rule ",
        b"target ",
        b"from ",
        b"on ",
        b"notify ",
        b"queue check ",
        b"include \"",
        b"\n",
        b"#",
        b"0",
        b"-1e999",
        b"\xff",
        b"\xc3",
    ];
    let mut rng = Rng(42);
    let mut outcomes = [0usize; 2];
    for _ in 0..1500 {
        let mut text = example.clone();
        for _ in 0..=rng.below(3) {
            let at = rng.below(text.len());
            match rng.below(3) {
                0 => {
                    let len = rng.below(20).min(text.len() - at);
                    text.drain(at..at + len);
                }
                1 => {
                    let t = tokens[rng.below(tokens.len())];
                    text.splice(at..at, t.iter().copied());
                }
                _ => text[at] = rng.next() as u8,
            }
        }
        let loaded = load(&text);
        outcomes[loaded.result.is_ok() as usize] += 1;
        if let Err(diags) = &loaded.result {
            diags.render(&loaded.files, false);
        }
    }
    // Both outcomes occur: the mutations are neither all harmless nor all fatal.
    assert!(outcomes[0] > 100 && outcomes[1] > 10, "{outcomes:?}");
}
