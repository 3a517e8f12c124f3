//! HMAC signatures: computing them (for `forward`) and checking them in constant time (for `verify`).
//! Pure functions over bytes; the schemes' header layouts live with their users.

use base64::Engine;
use hmac::{Hmac, Mac};

use crate::ruleset::HmacAlgorithm;

/// HMAC of `parts` (concatenated) under `key`.
pub fn hmac(alg: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // INVARIANT: HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match alg {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Whether `mac` is the HMAC of `parts` under `key`, compared in constant time.
pub fn verify(alg: HmacAlgorithm, key: &[u8], parts: &[&[u8]], mac: &[u8]) -> bool {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return false;
        };
        for part in parts {
            mac.update(part);
        }
        // `verify_slice` compares in constant time.
        mac.verify_slice(expected).is_ok()
    }
    match alg {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts, mac),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts, mac),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts, mac),
    }
}

/// The key of a Standard Webhooks secret: base64 after an optional `whsec_` prefix. A secret that is
/// not base64 is used as raw bytes, so a plain shared secret still works on both ends.
pub fn standard_webhooks_key(secret: &[u8]) -> Vec<u8> {
    let text = secret.strip_prefix(b"whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|_| secret.to_vec())
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_published_vector() {
        // The provider's documented test vector (`docs/providers.md`).
        let mac = hmac(
            HmacAlgorithm::Sha256,
            b"It's a Secret to Everybody",
            &[b"Hello, World!"],
        );
        assert_eq!(
            hex::encode(&mac),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(verify(
            HmacAlgorithm::Sha256,
            b"It's a Secret to Everybody",
            &[b"Hello, ", b"World!"],
            &mac
        ));
        assert!(!verify(
            HmacAlgorithm::Sha256,
            b"It's a Secret to Everybody",
            &[b"Hello, World?"],
            &mac
        ));
        assert!(!verify(
            HmacAlgorithm::Sha256,
            b"It's a Secret to Everybody",
            &[b"Hello, World!"],
            &mac[..31]
        ));
    }

    #[test]
    fn standard_webhooks_published_vector() {
        // The provider's documented test vector (`docs/providers.md`).
        let key = standard_webhooks_key(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let mac = hmac(
            HmacAlgorithm::Sha256,
            &key,
            &[
                b"msg_p5jXN8AQM9LWM0D4loKWxJek",
                b".",
                b"1614265330",
                b".",
                br#"{"test": 2432232314}"#,
            ],
        );
        assert_eq!(base64(&mac), "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            standard_webhooks_key(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            key,
            "the prefix is optional"
        );
    }

    #[test]
    fn slack_published_vector() {
        // The provider's documented test vector (`docs/providers.md`).
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let mac = hmac(
            HmacAlgorithm::Sha256,
            b"8f742231b10e8888abcd99yyyzzz85a5",
            &[b"v0:1531420618:", body.as_bytes()],
        );
        assert_eq!(
            hex::encode(mac),
            "a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }
}
