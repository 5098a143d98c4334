//! The router's authentication matrix, over a real gRPC call on loopback: every failure is
//! `Unauthenticated` and never a hint of the key; HS256/384/512 tokens with Jumpstarter's
//! claims are accepted.
#![cfg(feature = "router")]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jumpstarter_router::proto::router_service_client::RouterServiceClient;
use jumpstarter_router::proto::StreamRequest;
use jumpstarter_router::router::{Auth, AUDIENCE, ISSUER};
use serde_json::json;
use support::*;
use tonic::Code;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> serde_json::Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "auth-stream", "exp": now() + 600, "iat": now(), "nbf": now()})
}

fn sign(alg: Algorithm, key: impl AsRef<[u8]>, claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_secret(key.as_ref());
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with the given header and claims and a made-up signature.
fn forged(header: &str, claims: &serde_json::Value, sig: &str) -> String {
    format!("{}.{}.{}", b64(header), b64(&claims.to_string()), sig)
}

/// Opens a `Stream` call with these authorization values that sends one DATA frame and keeps
/// its request open, as a grpc-core client does; returns the call's status code.
async fn call(r: &TestRouter, auth: &[&str]) -> Code {
    call_with(r, auth, raw::data_then_open(b"first")).await
}

/// The same, with the request stream `requests`.
async fn call_with(
    r: &TestRouter,
    auth: &[&str],
    requests: impl futures_core::Stream<Item = StreamRequest> + Send + 'static,
) -> Code {
    let mut client = RouterServiceClient::new(r.channel().await);
    let mut req = tonic::Request::new(requests);
    for a in auth {
        req.metadata_mut()
            .append("authorization", a.parse().unwrap());
    }
    match client.stream(req).await {
        Ok(_) => Code::Ok,
        Err(s) => {
            assert!(!s.message().contains(KEY), "status leaks the key: {s:?}");
            s.code()
        }
    }
}

#[tokio::test]
async fn rejections_are_unauthenticated() {
    let r = TestRouter::start().await;
    let good = sign(Algorithm::HS256, KEY, &claims());
    let mut c = claims();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no header", vec![]),
        ("not bearer", vec![format!("Basic {good}")]),
        ("bearer without token", vec!["Bearer ".into()]),
        (
            "two headers",
            vec![format!("Bearer {good}"), format!("Bearer {good}")],
        ),
        ("garbage", vec!["Bearer not.a.jwt".into()]),
        ("garbage 2", vec!["Bearer %%%%".into()]),
        (
            "alg none",
            vec![format!(
                "Bearer {}",
                forged(r#"{"alg":"none","typ":"JWT"}"#, &claims(), "")
            )],
        ),
        (
            "RS256",
            vec![format!(
                "Bearer {}",
                forged(
                    r#"{"alg":"RS256","typ":"JWT"}"#,
                    &claims(),
                    &b64("x".repeat(256).as_str())
                )
            )],
        ),
        (
            "wrong key",
            vec![format!(
                "Bearer {}",
                sign(Algorithm::HS256, b"other-key", &claims())
            )],
        ),
        ("wrong iss", {
            c["iss"] = json!("https://evil.example/stream");
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("wrong aud", {
            let mut c = claims();
            c["aud"] = json!("https://jumpstarter.dev/controller");
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("expired", {
            let mut c = claims();
            c["exp"] = json!(now() - 5);
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("nbf in the future", {
            let mut c = claims();
            c["nbf"] = json!(now() + 300);
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("iat in the future", {
            let mut c = claims();
            c["iat"] = json!(now() + 300);
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("no exp", {
            let mut c = claims();
            c.as_object_mut().unwrap().remove("exp");
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("no sub", {
            let mut c = claims();
            c.as_object_mut().unwrap().remove("sub");
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("empty sub", {
            let mut c = claims();
            c["sub"] = json!("");
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        ("aud array without ours", {
            let mut c = claims();
            c["aud"] = json!(["https://jumpstarter.dev/controller"]);
            vec![format!("Bearer {}", sign(Algorithm::HS256, KEY, &c))]
        }),
        (
            "ES256",
            vec![format!(
                "Bearer {}",
                forged(
                    r#"{"alg":"ES256","typ":"JWT"}"#,
                    &claims(),
                    &b64(&"x".repeat(64))
                )
            )],
        ),
    ];
    for (name, auth) in cases {
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let code = within(10, name, call(&r, &auth)).await;
        assert_eq!(code, Code::Unauthenticated, "case {name:?}");
    }
    assert_eq!(r.router.stats().pending, 0, "a rejected caller was queued");
}

/// The refusal waits for the caller's first message (so grpc-core sees the status, not a
/// failed write), but a caller that sends nothing still gets it, after at most 1 s.
#[tokio::test]
async fn a_silent_refused_caller_gets_its_status_within_the_bound() {
    let r = TestRouter::start().await;
    let t = std::time::Instant::now();
    let code = within(
        5,
        "silent caller",
        call_with(&r, &["Bearer nope"], futures_util::stream::pending()),
    )
    .await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    // A caller that ends its request at once is answered at once.
    let t = std::time::Instant::now();
    let code = call_with(&r, &["Bearer nope"], futures_util::stream::empty()).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        t.elapsed() < std::time::Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

/// Jumpstarter's controller (golang-jwt v5) writes `aud` as an array and adds a `jti`.
#[tokio::test]
async fn controller_form_tokens_are_accepted_and_pair() {
    let r = TestRouter::start().await;
    let mut c = claims();
    c["sub"] = json!("controller-form");
    c["aud"] = json!([AUDIENCE]);
    c["jti"] = json!("0b6a3e2c-5d0e-4c1b-9a4f-8f6b2d7c1e90");
    let token = sign(Algorithm::HS256, KEY, &c);
    let bearer = format!("Bearer {token}");
    assert_eq!(call(&r, &[&bearer]).await, Code::Ok);
    r.wait_for("caller to be pending", |s| s.pending == 1).await;
    assert_eq!(call(&r, &[&bearer]).await, Code::Ok);
    r.wait_for("the pair", |s| s.pairs_total == 1).await;
}

#[tokio::test]
async fn hs256_hs384_hs512_are_accepted() {
    let r = TestRouter::start().await;
    for (i, alg) in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
        .into_iter()
        .enumerate()
    {
        let mut c = claims();
        c["sub"] = json!(format!("stream-{i}"));
        let token = sign(alg, KEY, &c);
        let code = within(10, "accepted call", call(&r, &[&format!("Bearer {token}")])).await;
        assert_eq!(code, Code::Ok, "{alg:?}");
        // The accepted caller waits for its peer in the pending table (its request stream
        // stays open).
        r.wait_for("caller to be pending", |s| {
            s.pending == i + 1 && s.pairs_total == 0
        })
        .await;
    }
}

#[tokio::test]
async fn a_token_expiring_in_the_far_future_is_no_panic() {
    let r = TestRouter::start().await;
    let mut c = claims();
    c["sub"] = json!("far-future");
    c["exp"] = json!(u64::MAX);
    let token = sign(Algorithm::HS256, KEY, &c);
    let code = within(10, "accepted call", call(&r, &[&format!("Bearer {token}")])).await;
    assert_eq!(code, Code::Ok);
    r.wait_for("caller to be pending", |s| s.pending == 1).await;
    // The router still serves: a second caller pairs with it.
    let code = within(10, "second call", call(&r, &[&format!("Bearer {token}")])).await;
    assert_eq!(code, Code::Ok);
    r.wait_for("the pair", |s| s.pairs_total == 1).await;
}

#[test]
fn minted_tokens_carry_jumpstarter_claims() {
    let auth = Auth::new(KEY);
    let token = auth
        .mint("s-1", std::time::Duration::from_secs(60))
        .unwrap();
    let payload = token.split('.').nth(1).unwrap();
    // base64url decode
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for ch in payload.bytes() {
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'a'..=b'z' => ch - b'a' + 26,
            b'0'..=b'9' => ch - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => continue,
        } as u32;
        bits = bits << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    let c: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(c["iss"], ISSUER);
    // The controller's form: `aud` as an array, and a `jti`.
    assert_eq!(c["aud"], json!([AUDIENCE]));
    assert!(c["jti"].is_string(), "jti missing: {c}");
    assert_eq!(c["sub"], "s-1");
    for k in ["exp", "iat", "nbf"] {
        assert!(c[k].is_u64(), "{k} missing: {c}");
    }
    assert_eq!(auth.verify(&token).unwrap().stream, "s-1");
}
