//! The router's connection settings: grpc-go's server keepalive, as the Go router takes it
//! from the `grpc.keepalive` section of Jumpstarter's controller configuration.

use std::time::Duration;

/// How the router keeps its client connections alive, polices their pings and ages them:
/// grpc-go's `keepalive.ServerParameters` and `keepalive.EnforcementPolicy`, which the Go
/// router reads from `grpc.keepalive` in the `jumpstarter-controller` ConfigMap.
///
/// The default is what Jumpstarter's operator configures: a PING every 10 s, 180 s for its
/// answer (long, so a session lives through an exporter's saturated network while it
/// flashes), pings from clients at most once a second and also with no call open, and no idle
/// or age limit; and, for proxies, a PING frame on a call after 20 s with nothing sent to it.
///
/// ```
/// use std::time::Duration;
/// use jumpstarter_router::router::Keepalive;
///
/// let mut keepalive = Keepalive::default();
/// keepalive.max_connection_age = Some(Duration::from_secs(3600));
/// keepalive.max_connection_age_grace = Some(Duration::from_secs(300));
/// assert_eq!(keepalive.interval, Some(Duration::from_secs(10)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// How often the router PINGs each client connection (`intervalTime`; `None`: never).
    pub interval: Option<Duration>,
    /// How long a client has to answer a PING before its connection, and every call on it,
    /// is closed (`timeout`).
    pub timeout: Duration,
    /// Clients' PINGs closer together than this are strikes; past two strikes in a row the
    /// client gets a GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings" and its connection is
    /// closed (`minTime`). A PING that follows DATA or HEADERS from the router is never one.
    pub min_time: Duration,
    /// Whether clients may PING a connection with no call open (`permitWithoutStream`). When
    /// not, such PINGs closer than two hours apart are strikes, as in grpc-go.
    pub permit_without_stream: bool,
    /// A connection with no call open for this long is closed gracefully: a GOAWAY, then the
    /// close (`maxConnectionIdle`; `None`: never).
    pub max_connection_idle: Option<Duration>,
    /// A connection this old (give or take 10 %, as in grpc-go) is sent a GOAWAY: it takes no
    /// new calls, and the ones it has go on (`maxConnectionAge`; `None`: no limit).
    pub max_connection_age: Option<Duration>,
    /// How long the calls of a connection past its `max_connection_age` may go on before the
    /// connection is closed with them (`maxConnectionAgeGrace`; `None`: until they end).
    pub max_connection_age_grace: Option<Duration>,
    /// A Jumpstarter PING frame goes on a caller's response when nothing went to it for this
    /// long (`None`: never). Not a grpc-go setting: proxies that count only stream data as
    /// activity (HAProxy's `timeout server`, 30 s on OpenShift routes) close a quiet call
    /// otherwise, HTTP/2 PINGs or not. Jumpstarter's peers and [`RouterStream`] skip PING
    /// frames; a busy call never gets one.
    ///
    /// [`RouterStream`]: crate::RouterStream
    pub ping_frame_interval: Option<Duration>,
}

impl Keepalive {
    /// grpc-go's floor for the server's PING interval (`keepalive.ServerParameters.Time`).
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

    /// The operator's settings (see [`Keepalive::default`]), as a constant.
    pub const OPERATOR: Keepalive = Keepalive {
        interval: Some(Duration::from_secs(10)),
        timeout: Duration::from_secs(180),
        min_time: Duration::from_secs(1),
        permit_without_stream: true,
        max_connection_idle: None,
        max_connection_age: None,
        max_connection_age_grace: None,
        ping_frame_interval: Some(Duration::from_secs(20)),
    };
}

impl Default for Keepalive {
    fn default() -> Self {
        Self::OPERATOR
    }
}
