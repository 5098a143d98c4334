//! Token checking on arbitrary `authorization` values: never a panic, and whatever passes is
//! checked again independently (an HMAC with ring, the claims with serde_json).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token(data));

/// Token checking on arbitrary `authorization` values: never a panic, and whatever passes is
/// checked again here, independently: an HMAC over `header.payload` with the key (ring), and
/// the claims read with serde_json.
fn token(data: &[u8]) {
    use jumpstarter_router::router::{Auth, AUDIENCE, ISSUER};
    const KEY: &[u8] = b"fuzz-router-key";
    let auth = Auth::new(KEY);
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(data) {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", value);
        if let Ok(grant) = auth.verify_metadata(&md) {
            let token = std::str::from_utf8(data).unwrap()[7..].trim().to_string();
            recheck(&token, &grant.stream);
        }
    }
    if let Ok(token) = std::str::from_utf8(data) {
        if let Ok(grant) = auth.verify(token) {
            recheck(token, &grant.stream);
        }
    }

    fn recheck(token: &str, stream: &str) {
        use base64_url as b64;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("accepted a token that is not three parts: {token:?}");
        };
        let header: serde_json::Value = serde_json::from_slice(&b64::decode(h)).unwrap();
        let alg = match header["alg"].as_str() {
            Some("HS256") => ring::hmac::HMAC_SHA256,
            Some("HS384") => ring::hmac::HMAC_SHA384,
            Some("HS512") => ring::hmac::HMAC_SHA512,
            other => panic!("accepted alg {other:?}"),
        };
        let key = ring::hmac::Key::new(alg, KEY);
        ring::hmac::verify(&key, format!("{h}.{p}").as_bytes(), &b64::decode(sig))
            .unwrap_or_else(|_| panic!("accepted a bad signature: {token:?}"));
        let claims: serde_json::Value = serde_json::from_slice(&b64::decode(p)).unwrap();
        assert_eq!(claims["iss"], ISSUER);
        let aud_ok = match &claims["aud"] {
            serde_json::Value::String(a) => a == AUDIENCE,
            serde_json::Value::Array(a) => a.iter().any(|x| x == AUDIENCE),
            _ => false,
        };
        assert!(aud_ok, "accepted aud {}", claims["aud"]);
        assert_eq!(claims["sub"].as_str(), Some(stream));
        assert!(!stream.is_empty());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            claims["exp"].as_f64().is_some_and(|exp| exp > now),
            "accepted exp {}",
            claims["exp"]
        );
        for k in ["nbf", "iat"] {
            if !claims[k].is_null() {
                assert!(
                    claims[k].as_f64().is_some_and(|t| t <= now),
                    "accepted {k} {}",
                    claims[k]
                );
            }
        }
    }

    /// Unpadded base64url, as JWTs use it (a few lines rather than a dependency).
    mod base64_url {
        pub(super) fn decode(s: &str) -> Vec<u8> {
            let mut out = Vec::new();
            let (mut acc, mut bits) = (0u32, 0);
            for c in s.bytes() {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'-' => 62,
                    b'_' => 63,
                    _ => panic!("accepted a token with {c:?} in base64url"),
                };
                acc = acc << 6 | u32::from(v);
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                }
            }
            out
        }
    }
}
