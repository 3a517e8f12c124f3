//! The `Idempotency-Key` of a notify as docs/delivery.md defines it: the first 16 bytes, in hex, of a
//! SHA-256 over the source, delivery id, rule name and action index, each followed by a zero byte.

use sha2::{Digest, Sha256};

pub fn idempotency_key(source: &str, delivery: &str, rule: &str, action: usize) -> String {
    let mut h = Sha256::new();
    for part in [source, delivery, rule, &action.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}
