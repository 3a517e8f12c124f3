//! The common case of [`super::extract`], by hand: one pass over the bytes that finds the wanted
//! values' extents and checks everything else, without serde's visitor machinery (with
//! `arbitrary_precision` every number skipped went through a map visitor and a string of its digits).
//!
//! INVARIANT: it answers only for bodies `serde_json::from_slice::<Value>` accepts, with what a walk
//! of that `Value` finds. It is stricter than serde_json where being exact would take more code
//! than it is worth, and then gives no answer (`None`) and `extract` parses the body whole:
//! - the whole body must be UTF-8 (serde_json refuses invalid UTF-8 in strings, and any non-ASCII
//!   byte outside a string is a syntax error anyway);
//! - nesting deeper than [`MAX_DEPTH`] (serde_json allows 128);
//! - a `\u` escape of a surrogate (serde_json pairs them or refuses them);
//! - a key that is serde_json's private number token ([`NUMBER_TOKEN`]), which a `Value` parse reads
//!   as a number (with `arbitrary_precision`), not as an object.
//!
//! Each wanted value is parsed by serde_json from its own bytes, so it is the `Value` a full parse
//! builds there; so is an array a negative index reads into (a forward pass cannot know where the
//! item is). `tests` compare the skim with a full parse and a walk on every payload fixture, on
//! random documents and on random edits of them.

use std::borrow::Cow;

use serde_json::Value;

use crate::ruleset::Step;

/// The bytes that end a run of plain string content: `"`, `\` and control characters.
static STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        stop[c] = true;
        c += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

/// Where the first [`STOP`] byte of `bytes` is: eight bytes at a time (each test below flags the
/// first byte it is looking for exactly; only bytes after it can be flagged wrongly), then one by one.
fn stop_in(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` that is zero (or, with `below`, under that value) sets its high bit.
    let under = |x: u64, below: u8| x.wrapping_sub(ONES * u64::from(below)) & !x & HIGH;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let w = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        let found = under(w ^ (ONES * u64::from(b'"')), 1)
            | under(w ^ (ONES * u64::from(b'\\')), 1)
            | under(w, 0x20);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| STOP[c as usize])
        .map(|i| at + i)
}

/// The key by which serde_json (with `arbitrary_precision`) marks an object as a number in disguise
/// (`serde_json::number::TOKEN`, private to it).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Nesting beyond this is left to serde_json (whose limit is 128).
const MAX_DEPTH: usize = 100;

/// The values at `paths`, or `None` when serde_json must decide (an error, or a case above).
pub(super) fn extract(body: &[u8], paths: &[&[Step]]) -> Option<Vec<Option<Value>>> {
    let text = std::str::from_utf8(body).ok()?;
    let wanted: Vec<(usize, &[Step])> = paths.iter().copied().enumerate().collect();
    let mut found = vec![None; paths.len()];
    let mut p = Skim {
        text,
        b: body,
        pos: 0,
        depth: 0,
    };
    p.ws();
    p.value(&wanted, &mut found)?;
    p.ws();
    (p.pos == body.len()).then_some(found)
}

/// The paths of `wanted` that go on into the member or item whose step `here` accepts, with the
/// steps left after it.
fn below<'p>(
    wanted: &[(usize, &'p [Step])],
    here: impl Fn(&Step) -> bool,
) -> Vec<(usize, &'p [Step])> {
    wanted
        .iter()
        .filter_map(|&(i, rest)| match rest.split_first() {
            Some((step, tail)) if here(step) => Some((i, tail)),
            _ => None,
        })
        .collect()
}

struct Skim<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Skim<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let yes = self.peek() == Some(c);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Past the opening bracket of an object or array: whether it has items (`false` when it closes
    /// at once with `close`, which is then consumed).
    fn open(&mut self, close: u8) -> Option<bool> {
        self.depth += 1;
        self.pos += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        if self.eat(close) {
            self.depth -= 1;
            return Some(false);
        }
        Some(true)
    }

    /// After an item of an object or array: `,` (more follow) or the closing bracket (`false`).
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.pos += 1;
                self.ws();
                Some(true)
            }
            c if c == close => {
                self.pos += 1;
                self.depth -= 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A value, recording what `wanted` (paths relative to it) find in it.
    fn value(&mut self, wanted: &[(usize, &[Step])], found: &mut [Option<Value>]) -> Option<()> {
        if wanted.is_empty() {
            return self.skip();
        }
        // A path that ends here wants this whole value; one with a negative index wants the whole
        // array to count from its end.
        if wanted
            .iter()
            .any(|(_, rest)| matches!(rest.first(), None | Some(Step::Index(..0))))
        {
            let start = self.pos;
            self.skip()?;
            let value: Value = serde_json::from_slice(&self.b[start..self.pos]).ok()?;
            for (i, rest) in wanted {
                found[*i] = crate::ruleset::walk(rest, &value).cloned();
            }
            return Some(());
        }
        match self.peek()? {
            b'{' => self.object(wanted, found),
            b'[' => self.array(wanted, found),
            // A scalar where a path wanted an object or array: the path selects nothing.
            _ => self.skip(),
        }
    }

    fn object(&mut self, wanted: &[(usize, &[Step])], found: &mut [Option<Value>]) -> Option<()> {
        if !self.open(b'}')? {
            return Some(());
        }
        loop {
            let key = self.key()?;
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            let below = below(wanted, |step| matches!(step, Step::Key(k) if *k == key));
            // A repeated key replaces the earlier value whole, as in a `Value`.
            for (i, _) in &below {
                found[*i] = None;
            }
            self.value(&below, found)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    fn array(&mut self, wanted: &[(usize, &[Step])], found: &mut [Option<Value>]) -> Option<()> {
        if !self.open(b']')? {
            return Some(());
        }
        let mut n: i64 = 0;
        loop {
            let below = below(wanted, |step| *step == Step::Index(n));
            self.value(&below, found)?;
            n += 1;
            if !self.more(b']')? {
                return Some(());
            }
        }
    }

    /// Any value, checked and dropped.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(&[], &mut []),
            b'[' => self.array(&[], &mut []),
            b'"' => self.string(None),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.pos..]
            .starts_with(word)
            .then(|| self.pos += word.len())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; what may follow is the caller's to check.
    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// An object key, borrowed from the body unless it has escapes.
    fn key(&mut self) -> Option<Cow<'a, str>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let mut decoded = None;
        self.string(Some(&mut decoded))?;
        let key = match decoded {
            Some(owned) => Cow::Owned(owned),
            None => Cow::Borrowed(&self.text[start..self.pos - 1]),
        };
        (key != NUMBER_TOKEN).then_some(key)
    }

    /// A string, from its opening quote to after its closing one. With `decoded`, a string with
    /// escapes is decoded into it (left `None` when there are none).
    fn string(&mut self, mut decoded: Option<&mut Option<String>>) -> Option<()> {
        self.pos += 1;
        let mut plain_from = self.pos;
        loop {
            // To the next quote or backslash; control characters must be escaped.
            let rest = &self.b[self.pos..];
            let at = stop_in(rest)?;
            if rest[at] < 0x20 {
                return None;
            }
            self.pos += at;
            if let Some(out) = decoded.as_deref_mut().and_then(Option::as_mut) {
                out.push_str(&self.text[plain_from..self.pos]);
            }
            if self.b[self.pos] == b'"' {
                self.pos += 1;
                return Some(());
            }
            let c = self.escape()?;
            if let Some(slot) = decoded.as_deref_mut() {
                let out = slot.get_or_insert_with(|| self.text[plain_from..self.pos].to_string());
                out.push(c);
            }
            // `\` plus `n`, or `\uXXXX`.
            self.pos += if self.b[self.pos + 1] == b'u' { 6 } else { 2 };
            plain_from = self.pos;
        }
    }

    /// The character the escape at `pos` stands for; `None` for an invalid escape or a surrogate.
    fn escape(&self) -> Option<char> {
        Some(match *self.b.get(self.pos + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hex = self.text.get(self.pos + 2..self.pos + 6)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                // Surrogates (which `from_u32` refuses) are left to serde_json.
                char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a full parse and a walk find: the reference.
    fn reference(body: &[u8], paths: &[&[Step]]) -> Option<Vec<Option<Value>>> {
        let value: Value = serde_json::from_slice(body).ok()?;
        Some(
            paths
                .iter()
                .map(|p| crate::ruleset::walk(p, &value).cloned())
                .collect(),
        )
    }

    /// Paths to the scalars of `v` (up to 64), and some that lead nowhere. Not to objects or arrays:
    /// a value wanted whole is parsed by serde_json, which would hide what the skim does inside it.
    fn paths_of(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        if out.len() > 64 {
            return;
        }
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    prefix.push(Step::Key(k.clone()));
                    paths_of(v, prefix, out);
                    prefix.pop();
                }
                prefix.push(Step::Key("missing".into()));
                out.push(prefix.clone());
                prefix.pop();
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate().take(3) {
                    prefix.push(Step::Index(i as i64));
                    paths_of(v, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                out.push(prefix.clone());
                prefix.push(Step::Key("below".into()));
                out.push(prefix.clone());
                prefix.pop();
            }
        }
    }

    /// When the skim answers, serde_json accepts the body and finds the same values.
    fn agrees(body: &[u8], paths: &[Vec<Step>]) {
        let refs: Vec<&[Step]> = paths.iter().map(Vec::as_slice).collect();
        if let Some(found) = extract(body, &refs) {
            assert_eq!(
                Some(found),
                reference(body, &refs),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn payloads() -> Vec<Vec<u8>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/payloads");
        let mut bodies: Vec<Vec<u8>> = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy();
                name.ends_with(".json") && !name.ends_with(".headers.json")
            })
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        bodies.sort();
        assert!(bodies.len() > 30, "the payloads were found");
        bodies
    }

    #[test]
    fn every_real_payload_is_skimmed_and_agrees_with_serde() {
        for body in payloads() {
            let value: Value = serde_json::from_slice(&body).unwrap();
            let mut paths = Vec::new();
            paths_of(&value, &mut Vec::new(), &mut paths);
            let refs: Vec<&[Step]> = paths.iter().map(Vec::as_slice).collect();
            let found = extract(&body, &refs);
            assert!(found.is_some(), "{}", String::from_utf8_lossy(&body));
            assert_eq!(found, reference(&body, &refs));
        }
    }

    #[test]
    fn what_serde_refuses_or_the_skim_leaves_to_it() {
        let deep = |n: usize| format!("{{\"a\": {}1{}}}", "[".repeat(n), "]".repeat(n));
        let refused: &[&[u8]] = &[
            b"",
            b" ",
            b"{",
            b"{\"a\": 1,}",
            b"[1, 2,]",
            b"{\"a\" 1}",
            b"{\"a\": 01}",
            b"{\"a\": 1.}",
            b"{\"a\": -}",
            b"{\"a\": 1e}",
            b"{\"a\": 1e+}",
            b"{\"a\": .5}",
            b"{\"a\": +1}",
            b"{\"a\": tru}",
            b"{\"a\": truex}",
            b"{\"a\": nul}",
            b"{\"a\": \"x\ty\"}",
            b"{\"a\": \"\\x\"}",
            b"{\"a\": \"\\u12\"}",
            b"{\"a\": \"\\u+123\"}",
            b"{\"a\": \"\\ud800\"}",
            b"{\"a\": \"\\udc00\"}",
            b"{\"a\": \"\xff\"}",
            b"\xef\xbb\xbf{}",
            b"{\"a\": 1} x",
            b"{\"a\": 1}}",
            b"{'a': 1}",
            b"{a: 1}",
            b"\"unterminated",
            // serde_json's number token: refused, or read as a number, by a `Value` parse.
            b"{\"$serde_json::private::Number\": \"abc\"}",
            b"{\"$serde_json::private::Number\": \"1\", \"b\": \"x\"}",
            b"{\"a\": {\"$serde_json::private::Numbe\\u0072\": true}}",
            b"{\"$serde_json::private::Number\": \"5\"}",
        ];
        // Below `a`, so that `a`'s value is skimmed, not handed whole to serde_json.
        let paths = [
            vec![Step::Key("a".into()), Step::Key("x".into())],
            vec![Step::Key("b".into())],
        ];
        let refs: Vec<&[Step]> = paths.iter().map(Vec::as_slice).collect();
        for body in refused {
            assert_eq!(
                extract(body, &refs),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // serde_json takes these; the skim leaves them to it.
        for body in [
            deep(101).into_bytes(),
            b"{\"a\": \"\\ud83d\\ude00\"}".to_vec(),
            b"{\"$serde_json::private::Number\": \"5\"}".to_vec(),
        ] {
            assert!(reference(&body, &refs).is_some());
            assert_eq!(extract(&body, &refs), None);
        }
        // And agrees on these.
        for body in [
            deep(98).into_bytes(),
            br#"{"a": 1e999999, "b": -0.0E-7, "c": 123456789012345678901234567890}"#.to_vec(),
            br#" {"a" : {"b": [1, {"c": "\u00e9\n\"\\\/"}]}, "a": {"d": true}} "#.to_vec(),
            br#"{"\u0061": "escaped key", "a\nb": null, "": []}"#.to_vec(),
            b"[]".to_vec(),
            b"\"a string\"".to_vec(),
            b"-12.5e+3".to_vec(),
            "{\"é\": \"ü\", \"emoji\": \"😀\"}".as_bytes().to_vec(),
        ] {
            let value: Value = serde_json::from_slice(&body).unwrap();
            let mut paths = Vec::new();
            paths_of(&value, &mut Vec::new(), &mut paths);
            let refs: Vec<&[Step]> = paths.iter().map(Vec::as_slice).collect();
            assert!(
                extract(&body, &refs).is_some(),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            agrees(&body, &paths);
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            "[a-z\\\\\"\n\u{e9}\u{1F600}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[ab\"\\\\]{0,2}", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// On documents serde_json writes, and on them edited byte by byte (mostly refused), the skim
        /// never answers differently from serde_json, whichever paths are wanted.
        #[test]
        fn the_skim_agrees_with_serde(
            value in json(),
            pretty in any::<bool>(),
            keep in prop::collection::vec(any::<bool>(), 64),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..3),
        ) {
            let mut body = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            let mut paths = Vec::new();
            paths_of(&value, &mut Vec::new(), &mut paths);
            let paths: Vec<Vec<Step>> = paths.into_iter().zip(&keep).filter(|(_, k)| **k).map(|(p, _)| p).collect();
            agrees(&body, &paths);
            for (at, byte, kind) in edits {
                if body.is_empty() {
                    break;
                }
                let i = at.index(body.len());
                match kind {
                    0 => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ => {
                        body.remove(i);
                    }
                }
                agrees(&body, &paths);
            }
        }
    }
}
