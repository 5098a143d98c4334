//! Router tokens: HS256/HS384/HS512 JWTs whose subject names the stream, exactly as
//! Jumpstarter's controller mints them and its Go router checks them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::Status;

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

/// The claims of a router token this crate reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
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
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // The Go router (golang-jwt) allows no leeway.
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
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("ROUTER_KEY") {
            Ok(k) if !k.is_empty() => Ok(Auth::new(k.as_bytes())),
            _ => Err(
                "ROUTER_KEY is not set: the router needs the key that signs stream tokens".into(),
            ),
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
        let now = unix_now();
        if c.iat.is_some_and(|iat| iat > now) {
            return Err(invalid(&"iat is in the future"));
        }
        if c.sub.is_empty() {
            return Err(invalid(&"empty subject"));
        }
        Ok(Grant {
            stream: c.sub,
            // A validly signed token may carry any `exp`: no overflow, whatever it says.
            expires: UNIX_EPOCH
                .checked_add(Duration::from_secs(c.exp))
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

    /// Mints a token for `stream`, valid for `ttl`, signed with HS256: the claims Jumpstarter's
    /// controller puts in router tokens (iss, aud, sub, exp, iat, nbf).
    ///
    /// # Errors
    ///
    /// Only if signing fails.
    pub fn mint(&self, stream: &str, ttl: Duration) -> Result<String, String> {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: stream.into(),
            exp: now + ttl.as_secs().max(1),
            iat: Some(now),
            nbf: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("cannot sign token: {e}"))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
