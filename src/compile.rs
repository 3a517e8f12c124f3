//! AST → [`RuleSet`]: resolve names, check values, compile regexes, JSONPaths and templates, lint.
//!
//! Input: the ASTs of every file of one rules set (the root and its includes) and a [`Secrets`]
//! resolver. Output: a [`Compiled`] rule set with its warnings, or every diagnostic found. All passes
//! run even after an error, so one `gateway check` shows every problem. No IO happens here: secrets
//! come through the trait, which `check` implements with placeholders.
//!
//! [`compile`] below is the whole pass structure, top to bottom. Each declaration compiles in its own
//! file, as `ruleset/` is laid out: `secret.rs`, `source.rs` (with the path index), `target.rs`,
//! `rule.rs`; `test` blocks in `rule_test/compile.rs`. Shared by them: `expr.rs` (match expressions,
//! literals, templates), `values.rs` (durations, sizes, numbers), `resolve.rs` (name tables) and
//! `lint.rs` (warnings); here, [`Cx`] with its diagnostics helpers and [`Options`].

mod expr;
mod lint;
mod resolve;
mod rule;
mod secret;
mod source;
mod target;
mod values;

pub(crate) use resolve::suggest;
pub(crate) use values::{parse_duration, parse_size};

use std::path::Path;
use std::sync::Arc;

// The rules are the operator's own input, not an attacker's: a fast hash (FxHash) over SipHash.
use rustc_hash::FxHashMap as HashMap;

use crate::diagnostic::{Diagnostic, DiagnosticKind, Diagnostics, NameKind};
use crate::rule_test::RuleTest;
use crate::ruleset::{Rule, RuleSet, SecretValue, Target};
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::{Ast, Item, Later, LaterName, RuleDecl, SourceDecl, Str, TargetDecl, Word};
use resolve::Names;

/// Where a declared secret comes from.
#[derive(Debug, Clone, Copy)]
pub enum SecretRef<'a> {
    Env(&'a str),
    File(&'a Path),
}

/// Loads secret values. `serve` reads the environment and files; `check` uses [`PlaceholderSecrets`].
pub trait Secrets {
    /// The value of secret `name`, or why it cannot be had (never containing the value).
    fn load(&self, name: &str, from: SecretRef<'_>) -> Result<SecretValue, String>;
}

/// Stands in for every secret, so a rules file can be checked without access to any.
pub struct PlaceholderSecrets;

impl Secrets for PlaceholderSecrets {
    fn load(&self, name: &str, _from: SecretRef<'_>) -> Result<SecretValue, String> {
        Ok(SecretValue::placeholder(name))
    }
}

/// Secrets given by value (for tests): a name not given gets the value `unused`.
#[cfg(test)]
pub(crate) struct FixedSecrets(pub(crate) &'static [(&'static str, &'static str)]);

#[cfg(test)]
impl Secrets for FixedSecrets {
    fn load(&self, name: &str, _from: SecretRef<'_>) -> Result<SecretValue, String> {
        let value = self
            .0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("unused", |(_, v)| v);
        Ok(SecretValue::new(name, value.as_bytes().to_vec()))
    }
}

/// A successfully compiled rules set.
#[derive(Debug)]
pub struct Compiled {
    pub rules: RuleSet,
    pub tests: Vec<RuleTest>,
    /// Warnings only; a `Compiled` has no errors.
    pub warnings: Diagnostics,
}

/// Compiles the parsed files of one rules set. The ASTs are consumed: each declaration is dropped as
/// soon as it is compiled, and targets and rules are read again one at a time when parsed with
/// [`crate::syntax::parse_later`], so that the AST of a large rules file is never held whole beside
/// the set that serves during a reload. Each target and rule that compiles equal to the one of the
/// same name in `previous` (the set serving) is that one, shared: a reload then holds a second copy
/// only of what changed.
pub(crate) fn compile(
    files: &SourceMap,
    asts: Vec<(FileId, Ast)>,
    secrets: &dyn Secrets,
    previous: Option<&RuleSet>,
) -> Result<Compiled, Diagnostics> {
    let mut cx = Cx::new(files, secrets);
    let previous = previous.map(Previous::new);
    let mut secret_decls = Vec::new();
    let mut source_decls = Vec::new();
    // Targets and rules are declared as they come (a name, a span and where to read the rest: 100,000
    // of them are the largest part of what a reload holds besides the sets).
    let mut target_decls: Vec<(Option<usize>, Span, Pending<TargetDecl>)> = Vec::new();
    let mut rule_decls: Vec<(Span, Pending<RuleDecl>)> = Vec::new();
    let mut test_decls = Vec::new();
    for (file, ast) in asts {
        for item in ast.items {
            match item {
                Item::Secret(d) => secret_decls.push(d),
                Item::Source(d) => source_decls.push(d),
                Item::Target(d) => {
                    let id = cx.declare_target(&d.name);
                    target_decls.push((id, d.name.span, Pending::Whole(Box::new(d))));
                }
                Item::Rule(d) => {
                    cx.declare_rule(&d.name);
                    rule_decls.push((d.name.span, Pending::Whole(Box::new(d))));
                }
                Item::Later(Later { at, name }) => match name {
                    LaterName::Target(name) => {
                        let id = cx.declare_target(&name);
                        target_decls.push((id, name.span, Pending::Later(file, at)));
                    }
                    LaterName::Rule(name) => {
                        cx.declare_rule(&name);
                        rule_decls.push((name.span, Pending::Later(file, at)));
                    }
                },
                Item::Test(d) => test_decls.push((file, d)),
                // Includes were followed by the loader.
                Item::Include(_) => {}
            }
        }
    }
    let source_decls: Vec<&SourceDecl> = source_decls.iter().collect();

    // A set without sources answers every request 404: never what was meant (an empty file, a
    // truncated copy), so it must not load, and a reload must not swap it in.
    if source_decls.is_empty() {
        cx.error(
            DiagnosticKind::NoSources,
            Span::new(FileId::default(), 0, 0),
        );
    }

    // Every name is declared before anything compiles, so references may come before declarations.
    let secret_ids: Vec<Option<usize>> = secret_decls
        .iter()
        .map(|d| cx.secrets.declare(&d.name.text, d.name.span, &mut cx.diags))
        .collect();
    let source_ids: Vec<Option<usize>> = source_decls
        .iter()
        .map(|d| cx.sources.declare(&d.name.text, d.name.span, &mut cx.diags))
        .collect();
    cx.secret_values = vec![None; cx.secrets.len()];
    for (decl, id) in secret_decls.iter().zip(&secret_ids) {
        let value = cx.secret(decl);
        if let (Some(id), Some(value)) = (id, value) {
            cx.secret_values[*id] = Some(value);
        }
    }
    let mut targets = Vec::with_capacity(target_decls.len());
    for (id, name, decl) in target_decls {
        let Some(decl) = cx.whole(decl, name, |item| match item {
            Item::Target(decl) => Some(decl),
            _ => None,
        }) else {
            continue;
        };
        let target = cx.target(&decl);
        if let (Some(_), Some(target)) = (id, target) {
            targets.push(match &previous {
                Some(previous) => previous.target(target),
                None => Arc::new(target),
            });
        }
    }
    let mut sources = Vec::new();
    for (decl, id) in source_decls.iter().zip(&source_ids) {
        let source = cx.source(decl);
        if let (Some(_), Some(source)) = (id, source) {
            sources.push(source);
        }
    }
    let mut rules = Vec::with_capacity(rule_decls.len());
    for (name, decl) in rule_decls {
        let Some(decl) = cx.whole(decl, name, |item| match item {
            Item::Rule(decl) => Some(decl),
            _ => None,
        }) else {
            continue;
        };
        if let Some(rule) = cx.rule(&decl, &sources) {
            rules.push(match &previous {
                Some(previous) => previous.rule(rule),
                None => Arc::new(rule),
            });
        }
    }
    let tests: Vec<RuleTest> = test_decls
        .iter()
        .filter_map(|(file, decl)| cx.test(*file, decl))
        .collect();

    // An error such as `from acm` makes `acme` look unused; those warnings would only be noise.
    if !cx.diags.has_errors() {
        cx.lint_unused();
    }
    let by_path = cx.index_paths(&sources, &source_decls);

    let mut diags = cx.diags;
    diags.sort();
    if diags.has_errors() {
        return Err(diags);
    }
    // INVARIANT: without errors every declaration compiled, so indices from the name tables are
    // indices into `sources`, `targets` and `rules`.
    for (i, rule) in rules.iter().enumerate() {
        match &rule.sources {
            Some(ids) => ids.iter().for_each(|&s| sources[s].rules.push(i)),
            None => sources.iter_mut().for_each(|s| s.rules.push(i)),
        }
    }
    for source in &mut sources {
        source.index = crate::ruleset::SourceIndex::build(&rules, &source.rules);
        source.reads = crate::ruleset::paths_read(&rules, &source.rules);
    }
    let secrets = cx
        .secret_values
        .iter()
        .zip(&cx.secrets.names)
        .filter_map(|(v, name)| v.clone().map(|v| (name.clone(), v)))
        .collect();
    Ok(Compiled {
        rules: RuleSet {
            sources,
            targets,
            rules,
            by_path,
            secrets,
            version: String::new(),
        },
        tests,
        warnings: diags,
    })
}

/// The targets and rules of the set loaded before, by name.
struct Previous<'p> {
    targets: HashMap<&'p str, &'p Arc<Target>>,
    rules: HashMap<&'p str, &'p Arc<Rule>>,
}

impl<'p> Previous<'p> {
    fn new(set: &'p RuleSet) -> Previous<'p> {
        Previous {
            targets: set.targets.iter().map(|t| (t.name.as_str(), t)).collect(),
            rules: set.rules.iter().map(|r| (r.name.as_str(), r)).collect(),
        }
    }

    /// The previous set's target of the same name if it is equal to `target`, else `target`.
    fn target(&self, target: Target) -> Arc<Target> {
        match self.targets.get(target.name.as_str()) {
            Some(&same) if **same == target => Arc::clone(same),
            _ => Arc::new(target),
        }
    }

    /// The previous set's rule of the same name if it is equal to `rule` (the same targets and
    /// sources by index, the same expression and actions), else `rule` with the previous rule's
    /// expression when that is the same: a target declared before the others moves their indices,
    /// and the rules that name them then differ only in those.
    fn rule(&self, mut rule: Rule) -> Arc<Rule> {
        let Some(&same) = self.rules.get(rule.name.as_str()) else {
            return Arc::new(rule);
        };
        if **same == rule {
            return Arc::clone(same);
        }
        if let (Some(new), Some(old)) = (&mut rule.when, &same.when)
            && new == old
        {
            *new = Arc::clone(old);
        }
        Arc::new(rule)
    }
}

/// A target or rule declaration: parsed whole, or to be read again at a byte of a file
/// ([`crate::syntax::parse_later`]) when its turn comes, so that one declaration's AST is held at a time.
enum Pending<T> {
    Whole(Box<T>),
    Later(FileId, usize),
}

/// Compilation state: the name tables, the diagnostics, and caches of compiled regexes and paths.
pub(crate) struct Cx<'a> {
    pub(crate) files: &'a SourceMap,
    loader: &'a dyn Secrets,
    pub(crate) diags: Diagnostics,
    secrets: Names,
    pub(crate) sources: Names,
    pub(crate) targets: Names,
    pub(crate) rules: Names,
    pub(crate) tests: Names,
    secret_values: Vec<Option<SecretValue>>,
    regexes: HashMap<(String, String), Arc<regex::Regex>>,
    paths: HashMap<String, Arc<crate::ruleset::JsonPath>>,
    /// Literals of match expressions by their source text: rules that write the same literal share it.
    /// Weak, so that a rule dropped for its equal in the previous set takes its literals with it.
    literals: HashMap<&'a str, std::sync::Weak<serde_json::Value>>,
    /// `on` lists, shared by the rules that write the same one.
    event_lists: HashMap<Vec<String>, Arc<[String]>>,
}

impl<'a> Cx<'a> {
    fn new(files: &'a SourceMap, loader: &'a dyn Secrets) -> Cx<'a> {
        Cx {
            files,
            loader,
            diags: Diagnostics::default(),
            secrets: Names::new(NameKind::Secret),
            sources: Names::new(NameKind::Source),
            targets: Names::new(NameKind::Target),
            rules: Names::new(NameKind::Rule),
            tests: Names::new(NameKind::Test),
            secret_values: Vec::new(),
            regexes: HashMap::default(),
            paths: HashMap::default(),
            literals: HashMap::default(),
            event_lists: HashMap::default(),
        }
    }

    fn declare_target(&mut self, name: &Word) -> Option<usize> {
        self.targets.declare(&name.text, name.span, &mut self.diags)
    }

    fn declare_rule(&mut self, written: &Str) {
        let name = self.plain(written, "rule names");
        if name.is_empty() {
            self.invalid_value(
                written.span,
                "rule name is empty",
                "name the rule after what it does",
            );
        }
        self.rules.declare(&name, written.span, &mut self.diags);
    }

    /// A pending declaration whole: as parsed, or read again at the byte where the parser read it
    /// once ([`crate::syntax::parse_later`]) and taken as its kind by `kind`. Reading it again gives
    /// what it gave the first time; were that ever not so, the set fails to load with an error at the
    /// declaration's name (`name`): never a panic, nor a set without the declaration.
    fn whole<T>(
        &mut self,
        decl: Pending<T>,
        name: Span,
        kind: impl FnOnce(Item) -> Option<T>,
    ) -> Option<T> {
        let (file, at) = match decl {
            Pending::Whole(decl) => return Some(*decl),
            Pending::Later(file, at) => (file, at),
        };
        let decl = crate::syntax::read_again(file, &self.files.get(file).text, at).and_then(kind);
        if decl.is_none() {
            self.invalid_value(
                name,
                "this declaration could not be read a second time",
                "this is a bug in hookgate: please report it with the rules file",
            );
        }
        decl
    }

    pub(crate) fn error(&mut self, kind: DiagnosticKind, span: Span) {
        self.diags.error(kind, span);
    }

    fn invalid_value(&mut self, span: Span, message: &str, help: &str) {
        self.error(
            DiagnosticKind::InvalidValue {
                message: message.into(),
                help: Some(help.into()),
            },
            span,
        );
    }

    /// A string that must not interpolate anything; reports each `${...}`.
    pub(crate) fn plain(&mut self, s: &Str, context: &'static str) -> String {
        for interp in s.interps() {
            let help = "write `\\${` for a literal `${`";
            self.diags.error(
                DiagnosticKind::InterpolationNotAllowed { context, help },
                interp.span,
            );
        }
        s.text()
    }

    /// Notes that `option` is given at `span`. Given a second time in the block, it is reported
    /// (`rules::duplicate_option`, with a label on the first) and `false` says to skip it.
    pub(crate) fn once(&mut self, given: &mut Options, option: &'static str, span: Span) -> bool {
        if let Some(first) = given.get(option) {
            self.diags.push(
                Diagnostic::new(DiagnosticKind::DuplicateOption { option }, span)
                    .with_label(first, "first given here"),
            );
            return false;
        }
        given.0.insert(option, span);
        true
    }
}

/// The options given so far in one block, to report one given twice.
#[derive(Default)]
pub(crate) struct Options(HashMap<&'static str, Span>);

impl Options {
    /// Where `option` was given, if it was.
    pub(crate) fn get(&self, option: &str) -> Option<Span> {
        self.0.get(option).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceText;
    use crate::syntax::{parse, parse_later};

    fn outcome(result: Result<Compiled, Diagnostics>) -> String {
        match result {
            // Not the whole set: its hash maps print in no fixed order.
            Ok(c) => format!(
                "{:?}\n{:?}\n{:?}\n{:?}",
                c.rules.targets, c.rules.rules, c.tests, c.warnings
            ),
            Err(diagnostics) => format!("{diagnostics:?}"),
        }
    }

    /// Targets and rules read again when compiled (`parse_later`) compile to what one whole parse
    /// gives, diagnostics included, on every rules file of the test suite.
    #[test]
    fn reading_declarations_again_compiles_what_one_parse_compiles() {
        let mut later = 0;
        for (name, text) in crate::syntax::tests::corpus() {
            let mut files = SourceMap::default();
            let file = files.add(SourceText::new(&name, None, text.as_str()));
            let whole = parse(file, &text).map(|ast| {
                outcome(compile(
                    &files,
                    vec![(file, ast)],
                    &PlaceholderSecrets,
                    None,
                ))
            });
            let read_again = parse_later(file, &text).map(|ast| {
                later += ast
                    .items
                    .iter()
                    .filter(|i| matches!(i, Item::Later(_)))
                    .count();
                outcome(compile(
                    &files,
                    vec![(file, ast)],
                    &PlaceholderSecrets,
                    None,
                ))
            });
            match (whole, read_again) {
                (Ok(whole), Ok(read_again)) => assert_eq!(whole, read_again, "{name}"),
                (Err(a), Err(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{name}"),
                (a, b) => panic!("{name}: {a:?} against {b:?}"),
            }
        }
        assert!(later > 100, "declarations were read again: {later}");
    }
}
