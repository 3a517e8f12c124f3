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
    let rendered = hookgate::cli::render(diags, &loaded.files, false);
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
        hookgate::cli::render(diags, &loaded.files, false);
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
    // A megabyte of comment is an empty, valid file.
    assert!(
        load(format!("# {}", "comment ".repeat(N / 8)).as_bytes())
            .result
            .is_ok()
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
            hookgate::cli::render(diags, &loaded.files, false);
        }
    }
    // Both outcomes occur: the mutations are neither all harmless nor all fatal.
    assert!(outcomes[0] > 100 && outcomes[1] > 10, "{outcomes:?}");
}
