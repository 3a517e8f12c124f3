//! The examples of the documentation are tested: every ```hook block of `docs/providers.md` is a complete
//! rules file that must load without a diagnostic (secrets as placeholders, as `gateway check` loads
//! them), and whose `test` blocks must pass against the payloads they name.

mod support;

use std::path::Path;

use hookgate::compile::PlaceholderSecrets;
use hookgate::load;

/// A fenced block of a Markdown file: the line its text starts on, and its text.
struct Block {
    line: usize,
    text: String,
}

/// The blocks fenced with ```` ```hook ````.
fn hook_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        match &mut open {
            None if line.trim_end() == "```hook" => {
                open = Some(Block {
                    line: i + 2,
                    text: String::new(),
                })
            }
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(open.take()),
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
        }
    }
    assert!(open.is_none(), "a ```hook block is not closed");
    blocks
}

/// Loads every block of the page at `path` (paths in a block resolve against the page's directory, as
/// `file(...)` in a rules file does) and runs its tests; returns every problem found, and the blocks.
fn check(path: &Path) -> (Vec<String>, Vec<Block>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.file_name().unwrap().to_string_lossy();
    let blocks = hook_blocks(&text);
    let mut problems = Vec::new();
    for block in &blocks {
        let label = format!("{name}:{}", block.line);
        let loaded = load::load_text(
            &label,
            Some(path.to_path_buf()),
            block.text.as_bytes(),
            &PlaceholderSecrets,
        );
        let compiled = match &loaded.result {
            Ok(c) => c,
            Err(d) => {
                problems.push(d.render(&loaded.files, false));
                continue;
            }
        };
        if !compiled.warnings.is_empty() {
            problems.push(compiled.warnings.render(&loaded.files, false));
        }
        for result in hookgate::rule_test::run(compiled) {
            if !result.passed() {
                problems.push(format!(
                    "{label}: test {:?} failed:\n{}",
                    result.name,
                    result.failures.join("\n")
                ));
            }
        }
    }
    (problems, blocks)
}

#[test]
fn every_provider_example_compiles_and_its_tests_pass() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/providers.md");
    let (problems, blocks) = check(&page);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // One example per provider kind at least, and every kind has one.
    for kind in hookgate::providers::KINDS {
        assert!(
            blocks
                .iter()
                .any(|b| b.text.contains(&format!(": {kind} {{"))),
            "docs/providers.md has no example of a `{kind}` source"
        );
    }
    let tested = blocks
        .iter()
        .filter(|b| b.text.contains("\ntest \""))
        .count();
    assert_eq!(tested, blocks.len(), "every example carries a test block");
}

#[test]
fn the_block_extractor_sees_what_markdown_fences() {
    let text =
        "intro\n```hook\nsecret s = env(\"S\")\n```\n```sh\nnot rules\n```\n```hook\na\nb\n```\n";
    let blocks = hook_blocks(text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(
        (blocks[0].line, blocks[0].text.as_str()),
        (3, "secret s = env(\"S\")\n")
    );
    assert_eq!((blocks[1].line, blocks[1].text.as_str()), (9, "a\nb\n"));
}

#[test]
fn a_broken_example_is_reported() {
    // The check can fail: a block with an error, a block with a warning, a block whose test fails.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.md");
    let rules = "secret s = env(\"S\")\nsource a: generic { secret s token header \"X\" }\n\
                 target t { post \"http://127.0.0.1:9/\" }\n";
    std::fs::write(
        &page,
        format!(
            "```hook\nsource a: github {{ secret missing }}\n```\n\n\
             ```hook\n{rules}target unused {{ post \"http://127.0.0.1:9/\" }}\nrule \"r\" {{ from a notify t }}\n```\n\n\
             ```hook\n{rules}rule \"r\" {{ from a when $.x == 1 notify t }}\n\
             test \"x\" {{ source a payload {{\"x\": 2}} expect matched [\"r\"] }}\n```\n"
        ),
    )
    .unwrap();
    let (problems, blocks) = check(&page);
    assert_eq!(blocks.len(), 3);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].contains("rules::unknown_secret"),
        "{}",
        problems[0]
    );
    assert!(problems[1].contains("rules::unused"), "{}", problems[1]);
    assert!(
        problems[2].starts_with("page.md:14: test \"x\" failed"),
        "{}",
        problems[2]
    );
}

#[test]
fn the_readme_walkthrough_shows_the_key_the_gateway_sends() {
    // The walk-through posts delivery `72d3162e-…` to source `acme`; the stand-in fluxd prints the
    // notify's `Idempotency-Key` (the first action of the matching rule) before the body.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md is readable");
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    assert!(readme.contains(&format!("X-GitHub-Delivery: {delivery}")));
    let key =
        support::idempotency::idempotency_key("acme", delivery, "sync app on push to main", 0);
    assert!(
        readme.contains(&format!("/api/flux/v11/notify {key} {{")),
        "the README's stand-in output should show key {key}"
    );
}
