//! Building signed requests in tests: real payloads with their headers, HMACs, the time, and the
//! derived path of a URL-token source.

use std::path::Path;

use hookgate::ruleset::HmacAlgorithm;
use hookgate::signature::hmac;
use serde_json::Value;

/// A payload of `tests/fixtures/payloads` and the headers of its `.headers.json` sidecar.
pub fn fixture(name: &str) -> (Vec<u8>, Vec<(String, String)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/payloads");
    let read = |file: String| {
        let path = dir.join(file);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let body = read(format!("{name}.json"));
    let headers: serde_json::Map<String, Value> =
        serde_json::from_slice(&read(format!("{name}.headers.json"))).unwrap();
    (
        body,
        headers
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
            .collect(),
    )
}

pub fn h(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

pub fn hex_mac(alg: HmacAlgorithm, key: &str, parts: &[&[u8]]) -> String {
    hex::encode(hmac(alg, key.as_bytes(), parts))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `/hook/<hex sha256(secret ++ name)>`: how a URL-token source's path is derived.
pub fn token_path(secret: &str, name: &str) -> String {
    use sha2::Digest;
    format!(
        "/hook/{}",
        hex::encode(sha2::Sha256::digest(format!("{secret}{name}")))
    )
}
