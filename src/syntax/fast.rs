//! A hand-written parser for text the grammar accepts: the AST that pest and `lower` would build,
//! several times faster and without pest's token queue (which for 100,000 rules held hundreds of MB).
//!
//! It follows `grammar/rules.pest` rule by rule, including where pest's implicit white space ends up
//! in a rule's span: `A ~ B` is `A`, skip, `B`; `A ~ B?` and `A ~ B*` keep the skip before `B` even
//! when `B` matches nothing; later iterations of `B*` begin with a skip that is undone when the
//! iteration fails. Every declaration of this language begins with its own keyword, and so does
//! every item inside a block, so no alternative needs backtracking across declarations.
//!
//! INVARIANT: when it returns a declaration, pest + `lower` return the same one (spans included).
//! It may give up on text the grammar accepts (a trailing comma, which `parse` reports; nesting
//! deeper than it follows): it then stops at the declaration, and `parse` hands it to pest, which
//! gives the result or the diagnostics. `tests` in `syntax.rs` compare the two on every rules file
//! of the test suite and on random edits of them.

use crate::source::{FileId, Span};
use crate::syntax::ast::*;

/// Deeper nesting than this is left to pest (which `too_deep` already bounds).
const MAX_NESTING: usize = 256;

/// Parses declarations from byte `start` of `text` (the whole file) until the end, or until one it
/// does not parse: the declarations parsed, and where that one starts. With `later`, targets and
/// rules are kept as [`Item::Later`] (read again with [`declaration_at`]).
pub(super) fn declarations(
    file: FileId,
    text: &str,
    start: usize,
    later: bool,
) -> (Vec<Item>, Option<usize>) {
    let mut p = Parser {
        text,
        b: text.as_bytes(),
        pos: start,
        file,
        depth: 0,
    };
    let mut items = Vec::new();
    loop {
        p.skip();
        if p.pos >= p.b.len() {
            return (items, None);
        }
        let at = p.pos;
        p.depth = 0;
        match p.item() {
            Some(item) if later => items.push(item.later(at)),
            Some(item) => items.push(item),
            None => return (items, Some(at)),
        }
    }
}

/// The declaration that starts at byte `at` of `text`, which an earlier [`declarations`] parsed.
pub(super) fn declaration_at(file: FileId, text: &str, at: usize) -> Option<Item> {
    let mut p = Parser {
        text,
        b: text.as_bytes(),
        pos: at,
        file,
        depth: 0,
    };
    p.item()
}

struct Parser<'t> {
    text: &'t str,
    b: &'t [u8],
    pos: usize,
    file: FileId,
    depth: usize,
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl Parser<'_> {
    fn span(&self, start: usize) -> Span {
        Span::new(self.file, start, self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.b.get(self.pos + ahead).copied()
    }

    /// White space and comments (pest's implicit `WHITESPACE` and `COMMENT`).
    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                b'#' => {
                    self.pos += 1;
                    while self.peek().is_some_and(|c| c != b'\n' && c != b'\r') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn lit(&mut self, s: &str) -> bool {
        if self.b[self.pos..].starts_with(s.as_bytes()) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// Whether keyword `w` (not running on into a name) is next, without consuming it.
    fn at_kw(&self, w: &str) -> bool {
        self.b[self.pos..].starts_with(w.as_bytes())
            && !self
                .b
                .get(self.pos + w.len())
                .is_some_and(|&c| is_ident_char(c))
    }

    fn kw(&mut self, w: &str) -> bool {
        let yes = self.at_kw(w);
        if yes {
            self.pos += w.len();
        }
        yes
    }

    /// One character (pest's `ANY`).
    fn any_char(&mut self) -> bool {
        match self.text[self.pos..].chars().next() {
            Some(c) => {
                self.pos += c.len_utf8();
                true
            }
            None => false,
        }
    }

    fn word_from(&self, start: usize) -> Word {
        Word {
            text: self.text[start..self.pos].to_string(),
            span: self.span(start),
        }
    }

    fn nest(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_NESTING).then_some(())
    }

    fn unnest(&mut self) {
        self.depth -= 1;
    }

    // Lexical rules ------------------------------------------------------------------------------

    fn ident(&mut self) -> Option<Word> {
        let start = self.pos;
        let first = self.peek()?;
        if !(first.is_ascii_alphabetic() || first == b'_') {
            return None;
        }
        self.pos += 1;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        Some(self.word_from(start))
    }

    fn digits(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// `int = @{ ASCII_DIGIT+ ~ !ident_char }`
    fn int(&mut self) -> Option<Word> {
        let start = self.pos;
        if !self.digits() || self.peek().is_some_and(is_ident_char) {
            self.pos = start;
            return None;
        }
        Some(self.word_from(start))
    }

    /// `duration` and `size`: `@{ ASCII_DIGIT+ ~ ident_char* }`
    fn unit_word(&mut self) -> Option<Word> {
        let start = self.pos;
        if !self.digits() {
            return None;
        }
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        Some(self.word_from(start))
    }

    fn number(&mut self) -> Option<String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => {
                self.pos = start;
                return None;
            }
        }
        if self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !self.digits() {
                self.pos = save;
            }
        }
        if self.peek().is_some_and(is_ident_char) {
            self.pos = start;
            return None;
        }
        Some(self.text[start..self.pos].to_string())
    }

    fn string(&mut self) -> Option<Str> {
        let start = self.pos;
        if !self.lit("\"") {
            return None;
        }
        // Most strings are one piece of text: room for one.
        let mut parts: Vec<StrPart> = Vec::with_capacity(1);
        let push_text = |parts: &mut Vec<StrPart>, s: &str| match parts.last_mut() {
            Some(StrPart::Text(t)) => t.push_str(s),
            _ => parts.push(StrPart::Text(s.to_string())),
        };
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'$' if self.peek_at(1) == Some(b'{') => {
                    self.nest()?;
                    let interp = self.interp()?;
                    self.unnest();
                    parts.push(StrPart::Interp(interp));
                }
                b'\\' => {
                    let len = match self.peek_at(1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'$' => 2,
                        b'u' if (2..6)
                            .all(|i| self.peek_at(i).is_some_and(|c| c.is_ascii_hexdigit())) =>
                        {
                            6
                        }
                        _ => return None,
                    };
                    let escape = &self.text[self.pos..self.pos + len];
                    push_text(&mut parts, &super::lower::unescape(escape));
                    self.pos += len;
                }
                b'\n' | b'\r' => return None,
                _ => {
                    let run = self.pos;
                    while let Some(c) = self.peek() {
                        let interp = c == b'$' && self.peek_at(1) == Some(b'{');
                        if matches!(c, b'"' | b'\\' | b'\n' | b'\r') || interp {
                            break;
                        }
                        self.pos += 1;
                    }
                    push_text(&mut parts, &self.text[run..self.pos]);
                }
            }
        }
        Some(Str {
            parts,
            span: self.span(start),
        })
    }

    /// `interp = !{ "${" ~ (jsonpath | secret_ref | ...) ~ "}" }`: white space is allowed inside.
    fn interp(&mut self) -> Option<Interp> {
        let start = self.pos;
        self.pos += 2;
        self.skip();
        let kind = if self.peek() == Some(b'$') {
            InterpKind::Path(self.jsonpath()?)
        } else if self.kw("secret") {
            // `secret_ref = ${ k_secret ~ "." ~ ident }`: no white space inside.
            if !self.lit(".") {
                return None;
            }
            InterpKind::Secret(self.ident()?)
        } else if self.kw("event") {
            InterpKind::Event
        } else if self.kw("source") {
            InterpKind::Source
        } else if self.kw("delivery") {
            InterpKind::Delivery
        } else if self.kw("header") {
            InterpKind::Header(self.call_arg()?)
        } else if self.kw("query") {
            InterpKind::Query(self.call_arg()?)
        } else {
            return None;
        };
        self.skip();
        if !self.lit("}") {
            return None;
        }
        Some(Interp {
            kind,
            span: self.span(start),
        })
    }

    /// The rest of `header_fn` / `query_fn` after the keyword: `"(" ~ string ~ ")"`.
    fn call_arg(&mut self) -> Option<Str> {
        self.skip();
        if !self.lit("(") {
            return None;
        }
        self.skip();
        let s = self.string()?;
        self.skip();
        self.lit(")").then_some(s)
    }

    fn regex(&mut self) -> Option<Regex> {
        let start = self.pos;
        if !self.lit("/") {
            return None;
        }
        let body = self.pos;
        loop {
            match self.peek() {
                Some(b'\\') if !matches!(self.peek_at(1), None | Some(b'\n' | b'\r')) => {
                    self.pos += 1;
                    self.any_char();
                }
                Some(b'/' | b'\\' | b'\n' | b'\r') | None => break,
                Some(_) => {
                    self.any_char();
                }
            }
        }
        let pattern = self.text[body..self.pos].replace("\\/", "/");
        if !self.lit("/") {
            return None;
        }
        let flags = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        Some(Regex {
            pattern,
            flags: self.word_from(flags),
            span: self.span(start),
        })
    }

    fn jsonpath(&mut self) -> Option<String> {
        let start = self.pos;
        if !self.lit("$") {
            return None;
        }
        loop {
            let save = self.pos;
            if !self.jp_segment()? {
                self.pos = save;
                break;
            }
        }
        Some(self.text[start..self.pos].to_string())
    }

    /// `None` when nesting is too deep to follow.
    fn jp_segment(&mut self) -> Option<bool> {
        let save = self.pos;
        if self.lit("..") {
            if self.jp_name() || self.lit("*") || self.jp_bracket()? {
                return Some(true);
            }
            self.pos = save;
        }
        if self.lit(".") {
            if self.jp_name() || self.lit("*") {
                return Some(true);
            }
            self.pos = save;
        }
        self.jp_bracket()
    }

    fn jp_name(&mut self) -> bool {
        let start = self.pos;
        // Non-ASCII characters are made of bytes >= 0x80 only.
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c >= 0x80)
        {
            self.pos += 1;
        }
        self.pos > start
    }

    fn jp_bracket(&mut self) -> Option<bool> {
        let save = self.pos;
        if !self.lit("[") {
            return Some(false);
        }
        self.nest()?;
        while self.jp_inner()? {}
        self.unnest();
        if self.lit("]") {
            Some(true)
        } else {
            self.pos = save;
            Some(false)
        }
    }

    fn jp_inner(&mut self) -> Option<bool> {
        Some(match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.jp_quoted(q)?,
            Some(b'[') => self.jp_bracket()?,
            Some(b'(') => {
                let save = self.pos;
                self.pos += 1;
                self.nest()?;
                while self.jp_inner()? {}
                self.unnest();
                if self.lit(")") {
                    true
                } else {
                    self.pos = save;
                    false
                }
            }
            Some(b']' | b')') | None => false,
            Some(_) => self.any_char(),
        })
    }

    /// A quoted name in a JSONPath. At a line end it gives up (`None`) and leaves the declaration to
    /// pest: an unclosed quote must not make every failing declaration scan to the end of the file.
    fn jp_quoted(&mut self, q: u8) -> Option<bool> {
        let save = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                None => break,
                Some(b'\n' | b'\r') => return None,
                Some(c) if c == q => {
                    self.pos += 1;
                    return Some(true);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    if !self.any_char() {
                        break;
                    }
                }
                Some(_) => {
                    self.any_char();
                }
            }
        }
        self.pos = save;
        Some(false)
    }

    // Lists --------------------------------------------------------------------------------------

    /// After the first element of `first ~ ("," ~ elem)*`: the sequence's skip (kept), then the
    /// iterations, each undone if it fails (later ones including their leading skip).
    fn more<T>(&mut self, out: &mut Vec<T>, elem: impl Fn(&mut Self) -> Option<T>) {
        self.skip();
        let mut first = true;
        loop {
            let save = self.pos;
            if !first {
                self.skip();
            }
            if !self.lit(",") {
                self.pos = save;
                return;
            }
            self.skip();
            match elem(self) {
                Some(x) => out.push(x),
                None => {
                    self.pos = save;
                    return;
                }
            }
            first = false;
        }
    }

    /// `"{" ~ (item ~ ";"?)* ~ "}"`, at the `{`.
    fn block<T>(&mut self, item: impl Fn(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        if !self.lit("{") {
            return None;
        }
        self.skip();
        let mut items = Vec::new();
        loop {
            if self.peek()? == b'}' {
                self.pos += 1;
                return Some(items);
            }
            items.push(item(self)?);
            self.skip();
            if self.peek() == Some(b';') {
                self.pos += 1;
            }
            self.skip();
        }
    }

    /// `A ~ B?` after `A`: the skip before `B` is kept; `B` is undone if it fails.
    fn optional<T>(&mut self, b: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        self.skip();
        let save = self.pos;
        let result = b(self);
        if result.is_none() {
            self.pos = save;
        }
        result
    }

    // Declarations -------------------------------------------------------------------------------

    fn item(&mut self) -> Option<Item> {
        Some(if self.kw("secret") {
            Item::Secret(self.secret_decl()?)
        } else if self.kw("source") {
            Item::Source(self.source_decl()?)
        } else if self.kw("target") {
            Item::Target(self.target_decl()?)
        } else if self.kw("rule") {
            Item::Rule(self.rule_decl()?)
        } else if self.kw("include") {
            self.skip();
            Item::Include(self.string()?)
        } else if self.kw("test") {
            Item::Test(self.test_decl()?)
        } else {
            return None;
        })
    }

    fn secret_decl(&mut self) -> Option<SecretDecl> {
        self.skip();
        let name = self.ident()?;
        self.skip();
        if !self.lit("=") {
            return None;
        }
        self.skip();
        let env = if self.kw("env") {
            true
        } else if self.kw("file") {
            false
        } else {
            return None;
        };
        let arg = self.call_arg()?;
        let from = if env {
            SecretFrom::Env(arg)
        } else {
            SecretFrom::File(arg)
        };
        Some(SecretDecl { name, from })
    }

    fn source_decl(&mut self) -> Option<SourceDecl> {
        self.skip();
        let name = self.ident()?;
        self.skip();
        if !self.lit(":") {
            return None;
        }
        self.skip();
        let kind = self.ident()?;
        self.skip();
        let items = self.block(Self::source_item)?;
        Some(SourceDecl { name, kind, items })
    }

    fn source_item(&mut self) -> Option<SourceItem> {
        let start = self.pos;
        let kind = if self.kw("secret") {
            self.skip();
            let mut names = vec![self.ident()?];
            self.more(&mut names, Self::ident);
            SourceItemKind::Secrets(names)
        } else if self.kw("path") {
            self.skip();
            SourceItemKind::Path(self.string()?)
        } else if self.kw("events") {
            self.skip();
            let mut events = vec![self.string()?];
            self.more(&mut events, Self::string);
            SourceItemKind::Events(events)
        } else if self.kw("max_body") {
            self.skip();
            SourceItemKind::MaxBody(self.unit_word()?)
        } else if self.kw("insecure") {
            SourceItemKind::Insecure
        } else if self.kw("header") {
            self.skip();
            SourceItemKind::Header(self.string()?)
        } else if self.kw("algorithm") {
            self.skip();
            SourceItemKind::Algorithm(self.ident()?)
        } else if self.kw("encoding") {
            self.skip();
            SourceItemKind::Encoding(self.ident()?)
        } else if self.kw("prefix") {
            self.skip();
            SourceItemKind::Prefix(self.string()?)
        } else if self.kw("token") {
            self.skip();
            if self.kw("header") {
                self.skip();
                SourceItemKind::TokenHeader(self.string()?)
            } else if self.kw("query") {
                self.skip();
                SourceItemKind::TokenQuery(self.string()?)
            } else {
                return None;
            }
        } else if self.kw("tolerance") {
            self.skip();
            SourceItemKind::Tolerance(self.unit_word()?)
        } else if self.kw("rate") {
            let (count, per) = self.rate()?;
            SourceItemKind::Rate { count, per }
        } else {
            return None;
        };
        Some(SourceItem {
            kind,
            span: self.span(start),
        })
    }

    /// `k_rate ~ int ~ k_per ~ duration`, after `rate`.
    fn rate(&mut self) -> Option<(Word, Word)> {
        self.skip();
        let count = self.int()?;
        self.skip();
        if !self.kw("per") {
            return None;
        }
        self.skip();
        Some((count, self.unit_word()?))
    }

    fn target_decl(&mut self) -> Option<TargetDecl> {
        self.skip();
        let name = self.ident()?;
        self.skip();
        let items = self.block(Self::target_item)?;
        Some(TargetDecl { name, items })
    }

    fn target_item(&mut self) -> Option<TargetItem> {
        let start = self.pos;
        let kind = if let Some(method) = ["post", "put", "patch", "get", "delete"]
            .into_iter()
            .find(|m| self.at_kw(m))
        {
            self.pos += method.len();
            let method = self.word_from(start);
            self.skip();
            TargetItemKind::Request {
                method,
                url: self.string()?,
            }
        } else if self.kw("header") {
            self.skip();
            let name = self.string()?;
            self.skip();
            if !self.lit("=") {
                return None;
            }
            self.skip();
            TargetItemKind::Header {
                name,
                value: self.string()?,
            }
        } else if self.kw("timeout") {
            self.skip();
            TargetItemKind::Timeout(self.unit_word()?)
        } else if self.kw("retry") {
            self.skip();
            let count = self.int()?;
            let backoff = self.optional(|p| {
                if !p.kw("backoff") {
                    return None;
                }
                p.skip();
                let min = p.unit_word()?;
                p.skip();
                if !p.lit("..") {
                    return None;
                }
                p.skip();
                Some((min, p.unit_word()?))
            });
            TargetItemKind::Retry { count, backoff }
        } else if self.kw("rate") {
            let (count, per) = self.rate()?;
            TargetItemKind::Rate { count, per }
        } else if self.kw("concurrency") {
            self.skip();
            TargetItemKind::Concurrency(self.int()?)
        } else if self.kw("signature") {
            self.skip();
            let style = self.ident()?;
            let header = self.optional(|p| {
                if !p.kw("header") {
                    return None;
                }
                p.skip();
                p.string()
            });
            TargetItemKind::Signature { style, header }
        } else {
            return None;
        };
        Some(TargetItem {
            kind,
            span: self.span(start),
        })
    }

    fn rule_decl(&mut self) -> Option<RuleDecl> {
        self.skip();
        let name = self.string()?;
        self.skip();
        let items = self.block(Self::rule_item)?;
        Some(RuleDecl { name, items })
    }

    fn rule_item(&mut self) -> Option<RuleItem> {
        let start = self.pos;
        let kind = if self.kw("from") {
            self.skip();
            if self.lit("*") {
                RuleItemKind::From(Vec::new())
            } else {
                let mut names = vec![self.ident()?];
                self.more(&mut names, Self::ident);
                RuleItemKind::From(names)
            }
        } else if self.kw("on") {
            self.skip();
            let mut events = vec![self.string()?];
            self.more(&mut events, Self::string);
            RuleItemKind::On(events)
        } else if self.kw("when") {
            self.skip();
            RuleItemKind::When(self.expr()?)
        } else if self.kw("notify") {
            self.skip();
            let target = self.ident()?;
            let body = self.optional(|p| match p.peek() {
                Some(b'{') => p.object(),
                Some(b'[') => p.array(),
                _ => None,
            });
            RuleItemKind::Notify { target, body }
        } else if self.kw("queue") {
            self.skip();
            if !self.kw("check") {
                return None;
            }
            self.skip();
            let target = self.ident()?;
            let key = self.optional(|p| {
                if !p.kw("key") {
                    return None;
                }
                p.skip();
                p.string()
            });
            RuleItemKind::Check { target, key }
        } else if self.kw("forward") {
            self.skip();
            let target = self.ident()?;
            let sign_with = self.optional(|p| {
                if !p.kw("sign") {
                    return None;
                }
                p.skip();
                if !p.kw("with") {
                    return None;
                }
                p.skip();
                p.ident()
            });
            RuleItemKind::Forward { target, sign_with }
        } else {
            return None;
        };
        Some(RuleItem {
            kind,
            span: self.span(start),
        })
    }

    fn test_decl(&mut self) -> Option<TestDecl> {
        // The `test` keyword is already consumed; the span starts at it.
        let start = self.pos - "test".len();
        self.skip();
        let name = self.string()?;
        self.skip();
        let items = self.block(Self::test_item)?;
        Some(TestDecl {
            name,
            items,
            span: self.span(start),
        })
    }

    fn test_item(&mut self) -> Option<TestItem> {
        if self.kw("expect") {
            self.skip();
            return self.expectation();
        }
        let start = self.pos;
        let kind = if self.kw("source") {
            self.skip();
            TestItemKind::Source(self.ident()?)
        } else if self.kw("event") {
            self.skip();
            TestItemKind::Event(self.string()?)
        } else if self.kw("headers") {
            self.skip();
            if !self.kw("file") {
                return None;
            }
            TestItemKind::HeadersFile(self.call_arg()?)
        } else if self.kw("header") {
            let (name, value) = self.assignment()?;
            TestItemKind::Header { name, value }
        } else if self.kw("query") {
            let (name, value) = self.assignment()?;
            TestItemKind::Query { name, value }
        } else if self.kw("payload") {
            self.skip();
            if self.kw("file") {
                TestItemKind::PayloadFile(self.call_arg()?)
            } else {
                TestItemKind::Payload(self.value()?)
            }
        } else {
            return None;
        };
        Some(TestItem {
            kind,
            span: self.span(start),
        })
    }

    /// `string ~ "=" ~ string`, after the keyword.
    fn assignment(&mut self) -> Option<(Str, Str)> {
        self.skip();
        let name = self.string()?;
        self.skip();
        if !self.lit("=") {
            return None;
        }
        self.skip();
        Some((name, self.string()?))
    }

    fn expectation(&mut self) -> Option<TestItem> {
        let start = self.pos;
        let kind = if self.kw("matched") {
            self.skip();
            if self.peek() != Some(b'[') {
                return None;
            }
            TestItemKind::ExpectMatched(self.array()?)
        } else if self.kw("notify") {
            self.skip();
            let target = self.ident()?;
            let body = self.optional(|p| {
                let how = if p.lit("==") {
                    BodyMatch::Equals
                } else if p.kw("contains") {
                    BodyMatch::Contains
                } else {
                    return None;
                };
                p.skip();
                Some((how, p.value()?))
            });
            TestItemKind::ExpectNotify { target, body }
        } else if self.kw("check") {
            self.skip();
            let target = self.ident()?;
            let key = self.optional(|p| {
                if !p.kw("key") {
                    return None;
                }
                p.skip();
                p.string()
            });
            TestItemKind::ExpectCheck { target, key }
        } else if self.kw("forward") {
            self.skip();
            TestItemKind::ExpectForward {
                target: self.ident()?,
            }
        } else {
            return None;
        };
        Some(TestItem {
            kind,
            span: self.span(start),
        })
    }

    // Match expressions --------------------------------------------------------------------------

    /// `first ~ (k_sep ~ first)*`, as for `expr` and `and_expr`.
    fn chain(&mut self, sep: &str, elem: fn(&mut Self) -> Option<Expr>) -> Option<Vec<Expr>> {
        let mut terms = vec![elem(self)?];
        self.skip();
        let mut first = true;
        loop {
            let save = self.pos;
            if !first {
                self.skip();
            }
            if !self.kw(sep) {
                self.pos = save;
                return Some(terms);
            }
            self.skip();
            terms.push(elem(self)?);
            first = false;
        }
    }

    fn expr(&mut self) -> Option<Expr> {
        let mut terms = self.chain("or", Self::and_expr)?;
        Some(if terms.len() == 1 {
            terms.pop()?
        } else {
            Expr::Or(terms)
        })
    }

    fn and_expr(&mut self) -> Option<Expr> {
        let mut terms = self.chain("and", Self::unary)?;
        Some(if terms.len() == 1 {
            terms.pop()?
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self) -> Option<Expr> {
        let mut nots = 0usize;
        if self.kw("not") {
            nots = 1;
            loop {
                let save = self.pos;
                self.skip();
                if self.kw("not") {
                    nots += 1;
                } else {
                    self.pos = save;
                    break;
                }
            }
        }
        self.skip();
        let operand = if self.lit("(") {
            self.nest()?;
            self.skip();
            let inner = self.expr()?;
            self.skip();
            self.unnest();
            if !self.lit(")") {
                return None;
            }
            inner
        } else {
            Expr::Predicate(self.predicate()?)
        };
        // `not not x` is `x`, as `lower` has it.
        Some(if nots % 2 == 1 {
            Expr::Not(Box::new(operand))
        } else {
            operand
        })
    }

    fn predicate(&mut self) -> Option<Predicate> {
        let start = self.pos;
        let quantifier = if self.kw("any") {
            Some((Quantifier::Any, self.span(start)))
        } else if self.kw("all") {
            Some((Quantifier::All, self.span(start)))
        } else {
            None
        };
        self.skip();
        let subject = self.value()?;
        self.skip();
        let op = self.op()?;
        Some(Predicate {
            quantifier,
            subject,
            op,
            span: self.span(start),
        })
    }

    fn op(&mut self) -> Option<Op> {
        if self.kw("contains") {
            self.skip();
            return Some(Op::Contains(self.value()?));
        }
        let starts = self.kw("starts");
        if starts || self.kw("ends") {
            self.skip();
            if !self.kw("with") {
                return None;
            }
            self.skip();
            let v = self.value()?;
            return Some(if starts {
                Op::StartsWith(v)
            } else {
                Op::EndsWith(v)
            });
        }
        if self.kw("matches") {
            self.skip();
            return Some(Op::Matches(self.regex()?));
        }
        let compare = [
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Ne),
            ("<=", CompareOp::Le),
            (">=", CompareOp::Ge),
            ("<", CompareOp::Lt),
            (">", CompareOp::Gt),
        ];
        if let Some(&(_, op)) = compare.iter().find(|(s, _)| self.lit(s)) {
            self.skip();
            return Some(Op::Compare(op, self.value()?));
        }
        if self.kw("in") {
            self.skip();
            return Some(Op::In(self.value()?));
        }
        if self.kw("exists") {
            return Some(Op::Exists);
        }
        None
    }

    // Values -------------------------------------------------------------------------------------

    fn value(&mut self) -> Option<Value> {
        let start = self.pos;
        let kind = match self.peek()? {
            b'{' => return self.object(),
            b'[' => return self.array(),
            b'"' => ValueKind::String(self.string()?),
            b'-' | b'0'..=b'9' => ValueKind::Number(self.number()?),
            b'$' => ValueKind::Path(self.jsonpath()?),
            _ if self.kw("true") => ValueKind::Bool(true),
            _ if self.kw("false") => ValueKind::Bool(false),
            _ if self.kw("null") => ValueKind::Null,
            _ if self.kw("payload") => ValueKind::Payload,
            _ if self.kw("event") => ValueKind::Event,
            _ if self.kw("source") => ValueKind::Source,
            _ if self.kw("delivery") => ValueKind::Delivery,
            _ if self.kw("header") => ValueKind::Header(self.call_arg()?),
            _ if self.kw("query") => ValueKind::Query(self.call_arg()?),
            _ => return None,
        };
        Some(Value {
            kind,
            span: self.span(start),
        })
    }

    /// `"{" ~ (member ~ ("," ~ member)*)? ~ "}"`; a trailing comma is left to pest (and reported).
    fn object(&mut self) -> Option<Value> {
        let start = self.pos;
        if !self.lit("{") {
            return None;
        }
        self.nest()?;
        self.skip();
        let mut members = Vec::new();
        if self.peek() != Some(b'}') {
            loop {
                let key = self.string()?;
                self.skip();
                if !self.lit(":") {
                    return None;
                }
                self.skip();
                members.push((key, self.value()?));
                self.skip();
                if !self.lit(",") {
                    break;
                }
                self.skip();
            }
        }
        if !self.lit("}") {
            return None;
        }
        self.unnest();
        Some(Value {
            kind: ValueKind::Object(members),
            span: self.span(start),
        })
    }

    fn array(&mut self) -> Option<Value> {
        let start = self.pos;
        if !self.lit("[") {
            return None;
        }
        self.nest()?;
        self.skip();
        let mut items = Vec::new();
        if self.peek() != Some(b']') {
            loop {
                items.push(self.value()?);
                self.skip();
                if !self.lit(",") {
                    break;
                }
                self.skip();
            }
        }
        if !self.lit("]") {
            return None;
        }
        self.unnest();
        Some(Value {
            kind: ValueKind::Array(items),
            span: self.span(start),
        })
    }
}
