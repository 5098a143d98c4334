//! Router tokens: HS256/HS384/HS512 JWTs whose subject names the stream, exactly as
//! Jumpstarter's controller mints them and its Go router checks them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::error::ConfigError;

/// The `iss` claim of router tokens.
pub const ISSUER: &str = "https://jumpstarter.dev/stream";
/// The `aud` claim of router tokens.
pub const AUDIENCE: &str = "https://jumpstarter.dev/router";

/// Checks the bearer tokens of `Stream` calls (and mints them, for labs and tests).
///
/// ```
/// use std::time::Duration;
/// use jumpstarter_router::router::Auth;
///
/// let auth = Auth::new(b"a-secret-key".to_vec());
/// let token = auth.mint("my-stream", Duration::from_secs(60)).unwrap();
/// assert_eq!(auth.verify(&token).unwrap().stream, "my-stream");
/// assert!(Auth::new(b"another-key".to_vec()).verify(&token).is_err());
/// ```
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// The claims of a router token this crate reads and writes. Other claims (`jti`, ...) are
/// ignored when read.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    sub: String,
    exp: NumericDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<NumericDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<NumericDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// `aud`: one string, or an array of them (RFC 7519 §4.1.3). Jumpstarter's controller
/// (golang-jwt v5) writes the array form even for a single audience. jsonwebtoken checks
/// that our audience is among them; this type only has to read both forms.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, an integer or not (golang-jwt reads
/// both; some libraries write `time.time() + ttl` as it is). Written as an integer when it is
/// one.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(transparent)]
struct NumericDate(f64);

impl Serialize for NumericDate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let secs = self.0;
        if secs.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&secs) {
            s.serialize_u64(secs as u64)
        } else {
            s.serialize_f64(secs)
        }
    }
}

impl From<u64> for NumericDate {
    fn from(secs: u64) -> Self {
        NumericDate(secs as f64)
    }
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The stream id (the token's subject).
    pub stream: String,
    /// When the token expires.
    pub expires: SystemTime,
}

// ===== impl Auth =====

impl Auth {
    /// Tokens signed with this HMAC key.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        let key = key.as_ref();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        // exp (required by `Claims`), nbf and iat are checked in `verify`: jsonwebtoken reads
        // only integer NumericDates.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        Auth {
            decoding: DecodingKey::from_secret(key),
            encoding: EncodingKey::from_secret(key),
            validation,
        }
    }

    /// The key from the environment variable `ROUTER_KEY`, as the Go router reads it.
    ///
    /// # Errors
    ///
    /// When the variable is unset or empty.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var("ROUTER_KEY") {
            Ok(k) if !k.is_empty() => Ok(Auth::new(k.as_bytes())),
            _ => Err(ConfigError::NoKey),
        }
    }

    /// Checks a token: signature (HS256/384/512 only), issuer, audience, `exp` (required),
    /// `nbf` and `iat` (not in the future), and a non-empty subject.
    ///
    /// # Errors
    ///
    /// `Unauthenticated` "invalid jwt token" for any failure; the reason is logged at debug
    /// level, never sent to the caller.
    pub fn verify(&self, token: &str) -> Result<Grant, Status> {
        let invalid = |why: &dyn fmt::Display| {
            tracing::debug!(reason = %why, "router: rejected token");
            Status::unauthenticated("invalid jwt token")
        };
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| invalid(&e))?;
        let c = data.claims;
        // As golang-jwt with no leeway: valid while now < exp, once now >= nbf and iat.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if now >= c.exp.0 {
            return Err(invalid(&"expired"));
        }
        if c.nbf.is_some_and(|nbf| now < nbf.0) {
            return Err(invalid(&"nbf is in the future"));
        }
        if c.iat.is_some_and(|iat| now < iat.0) {
            return Err(invalid(&"iat is in the future"));
        }
        if c.sub.is_empty() {
            return Err(invalid(&"empty subject"));
        }
        Ok(Grant {
            stream: c.sub,
            // A validly signed token may carry any `exp`: no overflow, whatever it says.
            expires: Duration::try_from_secs_f64(c.exp.0)
                .ok()
                .and_then(|d| UNIX_EPOCH.checked_add(d))
                .unwrap_or(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2)),
        })
    }

    /// Checks the `authorization: Bearer <jwt>` metadata of a call.
    ///
    /// # Errors
    ///
    /// `Unauthenticated` when the header is missing, repeated, not `Bearer`, or the token is
    /// invalid.
    pub fn verify_metadata(&self, metadata: &MetadataMap) -> Result<Grant, Status> {
        let mut values = metadata.get_all("authorization").iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Status::unauthenticated(
                "expected exactly one authorization header",
            ));
        };
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(Status::unauthenticated("malformed authorization header")),
        };
        if token.is_empty() {
            return Err(Status::unauthenticated("malformed authorization header"));
        }
        self.verify(token)
    }

    /// Mints a token for `stream`, valid for `ttl`, signed with HS256, in the form
    /// Jumpstarter's controller issues: iss, `aud` as a one-element array, sub, exp, iat,
    /// nbf, and a random `jti`.
    ///
    /// # Errors
    ///
    /// Only if signing fails.
    pub fn mint(&self, stream: &str, ttl: Duration) -> Result<String, ConfigError> {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: Audience::Many(vec![AUDIENCE.into()]),
            sub: stream.into(),
            exp: now.saturating_add(ttl.as_secs().max(1)).into(),
            iat: Some(now.into()),
            nbf: Some(now.into()),
            jti: Some(random_id().map_err(|_| ConfigError::Random)?),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ConfigError::Sign(e.into()))
    }
}

/// A random token id in UUID v4 form, like the controller's.
fn random_id() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"unit-test-key";

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(KEY),
        )
        .unwrap()
    }

    fn claims(aud: serde_json::Value) -> serde_json::Value {
        let now = unix_now();
        serde_json::json!({
            "iss": ISSUER, "aud": aud, "sub": "s", "iat": now, "nbf": now, "exp": now + 60,
        })
    }

    #[test]
    fn aud_as_a_string_or_an_array_with_ours() {
        let auth = Auth::new(KEY);
        for aud in [
            serde_json::json!(AUDIENCE),
            serde_json::json!([AUDIENCE]),
            serde_json::json!(["https://jumpstarter.dev/other", AUDIENCE]),
        ] {
            let mut c = claims(aud.clone());
            c["jti"] = serde_json::json!("4f0c5d0e-9a57-4a47-b1b3-0f3c6a4f1e2d");
            assert_eq!(auth.verify(&sign(c)).unwrap().stream, "s", "aud {aud}");
        }
    }

    #[test]
    fn aud_without_ours_is_refused() {
        let auth = Auth::new(KEY);
        for aud in [
            serde_json::json!("https://jumpstarter.dev/other"),
            serde_json::json!(["https://jumpstarter.dev/other"]),
            serde_json::json!([]),
            serde_json::json!(7),
            serde_json::json!([AUDIENCE, 7]),
        ] {
            let e = auth.verify(&sign(claims(aud.clone())));
            assert_eq!(
                e.unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "aud {aud}"
            );
        }
    }

    #[test]
    fn fractional_numeric_dates_are_read_and_checked() {
        let auth = Auth::new(KEY);
        let now = unix_now() as f64;
        let mut c = claims(serde_json::json!([AUDIENCE]));
        c["exp"] = serde_json::json!(now + 60.25);
        c["iat"] = serde_json::json!(now - 0.5);
        c["nbf"] = serde_json::json!(now - 0.5);
        assert_eq!(auth.verify(&sign(c.clone())).unwrap().stream, "s");
        for (claim, value) in [("exp", now - 0.5), ("nbf", now + 60.5), ("iat", now + 60.5)] {
            let mut bad = c.clone();
            bad[claim] = serde_json::json!(value);
            assert!(auth.verify(&sign(bad)).is_err(), "{claim} {value}");
        }
        for value in [
            serde_json::json!("soon"),
            serde_json::json!(-1),
            serde_json::json!(null),
        ] {
            let mut bad = c.clone();
            bad["exp"] = value.clone();
            assert!(auth.verify(&sign(bad)).is_err(), "exp {value}");
        }
        let mut bad = c.clone();
        bad.as_object_mut().unwrap().remove("exp");
        assert!(auth.verify(&sign(bad)).is_err(), "no exp");
        // Far beyond what a Duration holds: accepted, no panic.
        let mut far = c;
        far["exp"] = serde_json::json!(1e300);
        assert!(auth.verify(&sign(far)).is_ok());
    }

    #[test]
    fn minted_tokens_are_in_the_controller_form() {
        let auth = Auth::new(KEY);
        let a = auth.mint("s", Duration::from_secs(60)).unwrap();
        let b = auth.mint("s", Duration::from_secs(60)).unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[AUDIENCE]);
        let read = |t: &str| {
            jsonwebtoken::decode::<serde_json::Value>(t, &DecodingKey::from_secret(KEY), &v)
                .unwrap()
                .claims
        };
        let (ca, cb) = (read(&a), read(&b));
        assert_eq!(ca["aud"], serde_json::json!([AUDIENCE]));
        let jti = ca["jti"].as_str().unwrap();
        assert_eq!(jti.len(), 36, "{jti}");
        assert_eq!(jti.as_bytes()[14], b'4', "{jti}");
        assert_ne!(ca["jti"], cb["jti"], "token ids repeat");
        assert_eq!(auth.verify(&a).unwrap().stream, "s");
    }
}
