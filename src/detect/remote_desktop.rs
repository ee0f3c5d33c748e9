//! `remote_desktop` / `persistent_stream`: a remote-desktop session that stays up.
//!
//! A session is every flow of one remote-desktop tool at one inside host whose activity
//! (payload, not bare ACKs or keep-alives) never pauses longer than `reconnect_gap`:
//! reconnects and a tool's parallel flows (control channel, relay, UDP transport) are one
//! session, and a longer pause, even inside one open flow, starts a new one. Its span runs
//! from its first packet to its latest payload. It is reported while it runs, when the
//! span first reaches `min_duration` and again at each longer tier. Flows join a session
//! when the identification engine labels them; a flow labelled only at its end is not
//! followed.
//!
//! The inside host of a flow is its host (`NetworkConfig::host`): the inside end, between
//! two inside ends the pooled one, else the client.
//!
//! `via` in the evidence: `vendor_relay` when a flow of the session goes to the vendor's
//! relay or broker (`details.relay`), `turn_relay` when the host had a TURN-relayed STUN
//! flow during the session or up to `reconnect_gap` before it, else `direct`.
//!
//! Who is controlled: the controlled machine sends the screen, the controller sends input.
//! A host counts as controlled when, over the session, it sent at least `screen_ratio`
//! times the bytes it received, at least `min_screen_pkts` large packets (≥ 1000 B), and
//! received at least `min_input_pkts` small packets (≤ 100 B). The reverse figures make it
//! the controller; anything else is `undetermined`, so one-way bulk with no input never
//! makes a host "controlled". (Screen updates of RDP, VNC and the commercial tools run to
//! kilobytes per change, input events to tens of bytes: a 4× byte ratio is far below a
//! working session's and far above an idle one's.)
//!
//! Severity: an inside peer is administration (info). From outside, a controlled host is
//! medium, high from 1 h, critical from 12 h (the laptop-farm pattern); an undetermined
//! role is low, medium from 4 h; a controlling host is low.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::app::App;
use crate::detect::{Detector, Moment, Reason, Registered, Stage, moments};
use crate::dissect::identify::Details;
use crate::event::{Event, FlowRef, Kind, Role, SessionEvidence, Severity, Via};
use crate::flows::flow::{ORIG, RESP};
use crate::flows::{Flow, FlowKey, FlowTable, Handle, humantime_serde};
use crate::timestamp::Timestamp;

use super::Scope;

/// `[detect.remote_desktop]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteDesktopConfig {
    /// Span of activity after which a session is reported. Default `"15m"`.
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    /// Longer spans that report the session again. Default `["1h", "4h", "8h", "12h"]`.
    #[serde(deserialize_with = "durations")]
    pub tiers: Vec<Duration>,
    /// A pause in all of a session's flows longer than this ends it; a flow of the same
    /// tool at the same host within it continues the session. Default `"5m"`.
    #[serde(with = "humantime_serde")]
    pub reconnect_gap: Duration,
    /// Bytes sent over bytes received for the screen side. Default 4.0.
    pub screen_ratio: f64,
    /// Large packets (≥ 1000 B payload) the screen side must have sent. Default 20.
    pub min_screen_pkts: u64,
    /// Small packets (≤ 100 B payload) the screen side must have received. Default 20.
    pub min_input_pkts: u64,
    /// Sessions followed at once; more are not followed (and counted). Default 4096.
    pub max_sessions: usize,
}

impl Default for RemoteDesktopConfig {
    fn default() -> RemoteDesktopConfig {
        RemoteDesktopConfig {
            min_duration: Duration::from_secs(15 * 60),
            tiers: [1, 4, 8, 12]
                .iter()
                .map(|h| Duration::from_secs(h * 3600))
                .collect(),
            reconnect_gap: Duration::from_secs(5 * 60),
            screen_ratio: 4.0,
            min_screen_pkts: 20,
            min_input_pkts: 20,
            max_sessions: 4096,
        }
    }
}

impl RemoteDesktopConfig {
    /// See [`super::check`]; `tiers` not longer than `min_duration` are ignored.
    pub fn validate(&self) -> Result<(), String> {
        use super::check::{not_zero, positive};
        not_zero("min_duration", self.min_duration)?;
        not_zero("reconnect_gap", self.reconnect_gap)?;
        positive("screen_ratio", self.screen_ratio)?;
        not_zero("min_screen_pkts", self.min_screen_pkts)?;
        not_zero("min_input_pkts", self.min_input_pkts)?;
        not_zero("max_sessions", self.max_sessions)
    }
}

/// A list of humantime durations (`["1h", "4h"]`).
fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
        })
        .collect()
}

/// The flow as events name it, initiator first.
pub(crate) fn flow_ref(flow: &Flow) -> FlowRef {
    FlowRef {
        proto: flow.proto.as_str(),
        src_ip: flow.orig.0,
        src_port: flow.orig.1,
        dst_ip: flow.resp.0,
        dst_port: flow.resp.1,
    }
}

/// Adds `<prefix>`, `<prefix>_country` and `<prefix>_asn` (null when unknown).
pub(crate) fn with_place(scope: &Scope<'_>, e: Event, prefix: &str, ip: IpAddr) -> Event {
    let g = scope.geo.lookup(ip);
    e.evidence(prefix, ip.to_string())
        .evidence(&format!("{prefix}_country"), json!(g.country))
        .evidence(&format!("{prefix}_asn"), json!(g.asn))
}

/// The inside end a finding about `flow` is about (`flow_stage::flow_host`), and whether
/// it is the originator.
pub(crate) fn inside_end(scope: &Scope<'_>, flow: &Flow) -> Option<(IpAddr, bool)> {
    let host = crate::flow_stage::flow_host(scope.network, flow)?;
    Some((host, host != flow.resp.0))
}

/// An address the VPN assigns to accounts, or one an account is known to use at `ts`:
/// findings about it are about a person, not a server.
pub(crate) fn is_account_host(scope: &Scope<'_>, ip: IpAddr, ts: Timestamp) -> bool {
    scope.network.is_pooled(ip) || scope.identity.account_at(ip, ts).is_some()
}

/// Figures in evidence are rounded as in flow records: to two decimals.
pub(crate) use crate::flows::activity::round2;

/// Counters of one flow seen from the session's host: `[from host, to host]`.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    bytes: [u64; 2],
    large: [u64; 2],
    small: [u64; 2],
    active_ns: u64,
}

impl Figures {
    fn of(flow: &Flow, host_is_orig: bool) -> Figures {
        let (from, to) = if host_is_orig {
            (&flow.dir[ORIG], &flow.dir[RESP])
        } else {
            (&flow.dir[RESP], &flow.dir[ORIG])
        };
        Figures {
            bytes: [from.bytes, to.bytes],
            large: [from.large_pkts, to.large_pkts],
            small: [from.small_pkts, to.small_pkts],
            active_ns: from.active_ns.max(to.active_ns),
        }
    }

    /// What accrued since `base` was taken.
    fn since(&self, base: &Figures) -> Figures {
        let d = |a: [u64; 2], b: [u64; 2]| [a[0].saturating_sub(b[0]), a[1].saturating_sub(b[1])];
        Figures {
            bytes: d(self.bytes, base.bytes),
            large: d(self.large, base.large),
            small: d(self.small, base.small),
            active_ns: self.active_ns.saturating_sub(base.active_ns),
        }
    }

    fn add(&mut self, o: &Figures) {
        for i in 0..2 {
            self.bytes[i] = self.bytes[i].saturating_add(o.bytes[i]);
            self.large[i] = self.large[i].saturating_add(o.large[i]);
            self.small[i] = self.small[i].saturating_add(o.small[i]);
        }
        self.active_ns = self.active_ns.saturating_add(o.active_ns);
    }
}

/// One flow of a session while it is in the table.
#[derive(Clone, Debug)]
struct Member {
    /// Where the flow sat in the table when it was identified: each second's refresh finds
    /// it there, not by its key, while that holds.
    at: Option<Handle>,
    host_is_orig: bool,
    flow: FlowRef,
    peer: IpAddr,
    relay: bool,
    first: Timestamp,
    last_data: Timestamp,
    /// The flow's counters, and their values when the session (re)started.
    figures: Figures,
    base: Figures,
}

impl Member {
    fn refresh(&mut self, flow: &Flow) {
        let last = flow.dir[ORIG].last_data().max(flow.dir[RESP].last_data());
        self.last_data = last.unwrap_or(flow.first).max(self.last_data);
        self.figures = Figures::of(flow, self.host_is_orig);
    }

    /// The flow's share of the current session.
    fn share(&self) -> Figures {
        self.figures.since(&self.base)
    }
}

#[derive(Clone, Debug)]
struct Session {
    start: Timestamp,
    last_data: Timestamp,
    /// The session's flows in the table, in key order (the busiest on a tie is the first
    /// noted). A list, not a B-tree: a session has a few and every second walks them; a
    /// B-tree's walk and its retain cost twice the refresh itself.
    live: Vec<(FlowKey, Member)>,
    /// Flows of the session that ended, summed.
    ended: Figures,
    flows: u32,
    relay: bool,
    /// The peer of the session's busiest flow so far, and that flow.
    main: Option<(u64, IpAddr, FlowRef)>,
    /// Tiers reported so far.
    reported: usize,
}

impl Session {
    fn new(start: Timestamp) -> Session {
        Session {
            start,
            last_data: start,
            live: Vec::new(),
            ended: Figures::default(),
            flows: 0,
            relay: false,
            main: None,
            reported: 0,
        }
    }

    /// Activity came back after a pause longer than the reconnect gap: a new session
    /// starts at `at` with the flows that are still open.
    fn restart(&mut self, at: Timestamp) {
        let mut live = std::mem::take(&mut self.live);
        for (_, m) in &mut live {
            m.base = m.figures;
        }
        *self = Session::new(at);
        self.flows = live.len() as u32;
        self.live = live;
    }

    fn figures(&self) -> Figures {
        let mut f = self.ended;
        for (_, m) in &self.live {
            f.add(&m.share());
        }
        f
    }

    fn note(&mut self, m: &Member) {
        let share = m.share();
        let total = share.bytes[0].saturating_add(share.bytes[1]);
        if self.main.as_ref().is_none_or(|(b, _, _)| total > *b) {
            self.main = Some((total, m.peer, m.flow.clone()));
        }
        self.relay |= m.relay;
        self.last_data = self.last_data.max(m.last_data);
    }

    /// Notes every flow in the table, in key order.
    fn note_live(&mut self) {
        let live = std::mem::take(&mut self.live);
        for (_, m) in &live {
            self.note(m);
        }
        self.live = live;
    }

    /// The flow `key` among those in the table.
    fn member(&self, key: &FlowKey) -> Result<usize, usize> {
        self.live.binary_search_by(|(k, _)| k.cmp(key))
    }
}

pub struct RemoteDesktop {
    config: RemoteDesktopConfig,
    /// Report points: `min_duration`, then the longer tiers, ascending.
    points: Vec<Duration>,
    sessions: BTreeMap<(IpAddr, App), Session>,
    /// Inside hosts with a TURN-relayed STUN flow (RFC 8656), and when it was labelled:
    /// WebRTC-based tools carry their media through such relays.
    turn: BTreeMap<IpAddr, Timestamp>,
    /// Sessions not followed because `max_sessions` were.
    pub sessions_dropped: u64,
    /// TURN-relayed hosts forgotten at `max_sessions` (the lowest address goes).
    turn_evicted: u64,
}

impl RemoteDesktop {
    pub fn new(config: &RemoteDesktopConfig) -> RemoteDesktop {
        let mut points = vec![config.min_duration];
        let mut tiers: Vec<Duration> = config
            .tiers
            .iter()
            .copied()
            .filter(|t| *t > config.min_duration)
            .collect();
        tiers.sort();
        tiers.dedup();
        points.extend(tiers);
        RemoteDesktop {
            config: config.clone(),
            points,
            sessions: BTreeMap::new(),
            turn: BTreeMap::new(),
            sessions_dropped: 0,
            turn_evicted: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> [(&'static str, u64); 2] {
        [
            ("remote_desktop_sessions", self.sessions_dropped),
            ("remote_desktop_turn", self.turn_evicted),
        ]
    }

    /// Every session still running at `now`, as (inside host, tool).
    pub fn active_sessions(&self, now: Timestamp) -> impl Iterator<Item = (IpAddr, App)> + '_ {
        self.sessions
            .iter()
            .filter(move |(_, s)| {
                !s.live.is_empty() || now.since(s.last_data) <= self.config.reconnect_gap
            })
            .map(|(key, _)| *key)
    }

    /// The tool of a session at `host` still running at `now`, if one is.
    pub fn active_app(&self, host: IpAddr, now: Timestamp) -> Option<App> {
        self.sessions
            .range((host, App::Rdp)..=(host, App::Unknown))
            .find(|(_, s)| {
                !s.live.is_empty() || now.since(s.last_data) <= self.config.reconnect_gap
            })
            .map(|((_, app), _)| *app)
    }

    pub fn on_identified(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        at: Option<Handle>,
        flow: &Flow,
    ) {
        if flow.app == Some(App::Stun)
            && let Some((host, _)) = inside_end(scope, flow)
            && flow.details.as_deref().is_some_and(Details::turn_relayed)
        {
            if self.turn.len() >= self.config.max_sessions
                && !self.turn.contains_key(&host)
                && self.turn.pop_first().is_some()
            {
                self.turn_evicted += 1;
            }
            self.turn.insert(host, flow.first);
        }
        let Some(app) = flow.app.filter(|a| a.is_remote_desktop()) else {
            return;
        };
        let Some((host, host_is_orig)) = inside_end(scope, flow) else {
            return;
        };
        let peer = if host_is_orig {
            flow.resp.0
        } else {
            flow.orig.0
        };
        let details = flow.details.as_deref();
        let mut member = Member {
            at,
            host_is_orig,
            flow: flow_ref(flow),
            peer,
            relay: details.is_some_and(|d| d.relay),
            first: flow.first,
            last_data: flow.first,
            figures: Figures::default(),
            base: Figures::default(),
        };
        member.refresh(flow);
        let gap = self.config.reconnect_gap;
        let full = self.sessions.len() >= self.config.max_sessions;
        match self.sessions.get_mut(&(host, app)) {
            Some(s) if member.first.since(s.last_data) > gap => s.restart(member.first),
            Some(_) => {}
            None if full => {
                self.sessions_dropped += 1;
                return;
            }
            None => {
                self.sessions
                    .insert((host, app), Session::new(member.first));
            }
        }
        if let Some(s) = self.sessions.get_mut(&(host, app)) {
            s.start = s.start.min(member.first);
            s.flows += 1;
            s.note(&member);
            match s.member(key) {
                Ok(i) => s.live[i].1 = member,
                Err(i) => s.live.insert(i, (*key, member)),
            }
        }
    }

    pub fn on_end(&mut self, scope: &Scope<'_>, flow: &Flow) {
        let Some(app) = flow.app.filter(|a| a.is_remote_desktop()) else {
            return;
        };
        let Some((host, _)) = inside_end(scope, flow) else {
            return;
        };
        let key = flow.key();
        if let Some(s) = self.sessions.get_mut(&(host, app))
            && let Ok(i) = s.member(&key)
        {
            let (_, mut m) = s.live.remove(i);
            m.refresh(flow);
            s.note(&m);
            s.ended.add(&m.share());
        }
    }

    pub fn on_tick(
        &mut self,
        scope: &Scope<'_>,
        now: Timestamp,
        flows: &FlowTable,
        out: &mut Vec<Event>,
    ) {
        // Most of a sensor's 64 partitions follow no session: a tick costs them nothing.
        if self.sessions.is_empty() {
            return;
        }
        let gap = self.config.reconnect_gap;
        // Times compared in ns: a `Duration` between two timestamps is a division, and
        // every session takes four each second.
        let gap_ns = gap.as_nanos();
        let since = |a: Timestamp, b: Timestamp| u128::from(a.0.saturating_sub(b.0));
        // One walk, in key order: a session's update and its reports need nothing of the
        // others. Sessions that ended go after it (few do; a B-tree's retain cost as much
        // as the walk).
        let mut ended = Vec::new();
        for ((host, app), s) in self.sessions.iter_mut() {
            let mut latest = s.last_data;
            for (key, m) in &mut s.live {
                if let Some(f) = super::find(flows, m.at, key) {
                    m.refresh(f);
                }
                latest = latest.max(m.last_data);
            }
            if since(latest, s.last_data) > gap_ns {
                s.restart(latest);
            }
            s.note_live();
            if s.live.is_empty() && since(now, s.last_data) > gap_ns {
                ended.push((*host, *app));
                continue;
            }
            let span = since(s.last_data, s.start);
            while let Some(point) = self.points.get(s.reported).copied()
                && span >= point.as_nanos()
            {
                // A TURN relay at the host during the session, or just before it.
                let turn = self
                    .turn
                    .get(host)
                    .is_some_and(|t| *t <= s.last_data && s.start.since(*t) <= gap);
                out.push(report(
                    &self.config,
                    scope,
                    (*host, *app),
                    s,
                    turn,
                    point,
                    now,
                ));
                s.reported += 1;
            }
        }
        for key in ended {
            self.sessions.remove(&key);
        }
    }
}

/// The role of the inside host from a session's figures (module doc).
fn role(c: &RemoteDesktopConfig, f: &Figures) -> Role {
    let screen = |from: usize, to: usize| {
        f.bytes[from] as f64 >= c.screen_ratio * f.bytes[to].max(1) as f64
            && f.large[from] >= c.min_screen_pkts
            && f.small[to] >= c.min_input_pkts
    };
    if screen(0, 1) {
        Role::Controlled
    } else if screen(1, 0) {
        Role::Controller
    } else {
        Role::Undetermined
    }
}

/// Severity grows with the span when someone outside operates an inside host; an inside
/// peer is administration (info); other outside sessions stay low or medium.
fn severity(role: Role, peer_inside: bool, span: Duration) -> Severity {
    let h = |n: u64| Duration::from_secs(n * 3600);
    match (peer_inside, role) {
        (true, _) => Severity::Info,
        (false, Role::Controlled) if span >= h(12) => Severity::Critical,
        (false, Role::Controlled) if span >= h(1) => Severity::High,
        (false, Role::Controlled) => Severity::Medium,
        (false, Role::Undetermined) if span >= h(4) => Severity::Medium,
        (false, _) => Severity::Low,
    }
}

fn report(
    c: &RemoteDesktopConfig,
    scope: &Scope<'_>,
    (host, app): (IpAddr, App),
    s: &Session,
    turn: bool,
    point: Duration,
    now: Timestamp,
) -> Event {
    let f = s.figures();
    let role = role(c, &f);
    let span = s.last_data.since(s.start);
    let (peer, flow) = match &s.main {
        Some((_, p, f)) => (Some(*p), Some(f.clone())),
        None => (None, None),
    };
    let peer_inside = peer.is_some_and(|p| scope.network.is_inside(p));
    let tier = humantime::format_duration(point).to_string();
    let mut e = Event::new(
        now,
        Kind::RemoteDesktop,
        "persistent_stream",
        severity(role, peer_inside, span),
        &format!("{app} {} {tier}", s.start.secs()),
    );
    e.host = Some(host);
    e.flow = flow;
    e.app = Some(app);
    let via = match (s.relay, turn) {
        (true, _) => Via::VendorRelay,
        (false, true) => Via::TurnRelay,
        (false, false) => Via::Direct,
    };
    let peer_text = match peer {
        Some(p) if via != Via::Direct => format!(", peer {p} ({})", via.as_str().replace('_', " ")),
        Some(p) => format!(", peer {p}"),
        None => String::new(),
    };
    e.summary = format!(
        "{app} session at {host} active for {}: host {}{peer_text}",
        humantime::format_duration(Duration::from_secs(span.as_secs())),
        role.as_str(),
    );
    let ratio = |a: u64, b: u64| round2(a as f64 / b.max(1) as f64);
    let e = e.with(&SessionEvidence {
        tier,
        role,
        via,
        peer_inside,
        session_start: s.start,
        duration_s: span.as_secs(),
        active_s: round2(f.active_ns as f64 / 1e9),
        flows: s.flows,
        bytes_from_host: f.bytes[0],
        bytes_to_host: f.bytes[1],
        byte_ratio: ratio(f.bytes[0], f.bytes[1]),
        large_pkts_from_host: f.large[0],
        large_pkts_to_host: f.large[1],
        small_pkts_from_host: f.small[0],
        small_pkts_to_host: f.small[1],
        peer,
    });
    match peer {
        Some(p) => with_place(scope, e, "peer", p),
        None => e,
    }
}

/// Test inputs for the detectors: a scope over the test geo database and a flow table
/// fed with packets, so hours of behaviour run in milliseconds.
#[cfg(test)]
pub(crate) mod testkit {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::accounts::Inventory;
    use crate::config::NetworkConfig;
    use crate::decode::{ACK, Decoded, PSH, Proto, SYN, Tcp};
    use crate::dissect::identify::{Details, Protocol, protocol};
    use crate::dissect::stun::StunDetails;
    use crate::flows::{FlowConfig, FlowEvent, FlowKey, FlowTable};
    use crate::geo::{Geo, GeoConfig};
    use crate::identity::Identity;
    use crate::timestamp::Timestamp;

    /// The details of a STUN flow whose TURN allocation got a relayed address.
    pub fn turn_details() -> Details {
        Details {
            other: protocol(
                Protocol::Stun,
                StunDetails {
                    relayed: true,
                    ..StunDetails::default()
                },
            ),
            ..Details::default()
        }
    }

    use super::Scope;

    pub const MS: u64 = 1_000_000;
    pub const SEC: u64 = 1_000 * MS;
    pub const MIN: u64 = 60 * SEC;
    /// 2026-11-02T14:00:00Z, as in the fixtures.
    pub const T0: u64 = 1_793_628_000 * SEC;

    pub struct World {
        pub network: NetworkConfig,
        identity: Identity,
        geo: Geo,
    }

    impl World {
        /// Inside: 10.8.0.0/16 (the VPN pool) and 10.20.0.0/16.
        pub fn new() -> World {
            let db =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/test/test-geo.mmdb");
            let geo = Geo::open(&GeoConfig {
                country: Some(db.clone()),
                asn: Some(db),
                ..GeoConfig::default()
            })
            .expect("test geo database");
            World {
                network: NetworkConfig {
                    inside: vec![
                        "10.8.0.0/16".parse().unwrap(),
                        "10.20.0.0/16".parse().unwrap(),
                    ]
                    .into(),
                    vpn_pool: vec!["10.8.0.0/16".parse().unwrap()].into(),
                    ..Default::default()
                },
                identity: Identity::new(Arc::new(Inventory::default())),
                geo,
            }
        }

        pub fn scope(&self) -> Scope<'_> {
            Scope {
                network: &self.network,
                identity: &self.identity,
                geo: &self.geo,
                sessions: None,
            }
        }
    }

    static ZEROS: [u8; 1500] = [0; 1500];

    /// A flow table fed packet by packet; its events collect in `events`.
    pub struct Wire {
        pub table: FlowTable,
        pub events: Vec<FlowEvent>,
        seq: BTreeMap<(SocketAddr, SocketAddr), u32>,
    }

    impl Wire {
        pub fn new() -> Wire {
            Wire {
                table: FlowTable::new(FlowConfig {
                    reassembly_bytes: 0,
                    udp_timeout: std::time::Duration::from_secs(7200),
                    tcp_established_timeout: std::time::Duration::from_secs(7200),
                    ..FlowConfig::default()
                }),
                events: Vec::new(),
                seq: BTreeMap::new(),
            }
        }

        fn send(
            &mut self,
            ts: u64,
            src: &str,
            dst: &str,
            proto: Proto,
            flags: u8,
            len: usize,
        ) -> FlowKey {
            let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let seq = self.seq.entry((s, d)).or_insert(1000);
            let tcp = (proto == Proto::Tcp).then_some(Tcp {
                flags,
                seq: *seq,
                ack: 0,
                window: 1000,
                ts: None,
            });
            *seq = seq.wrapping_add(len as u32 + u32::from(flags & SYN != 0));
            let dec = Decoded {
                src: s.ip(),
                dst: d.ip(),
                proto,
                src_port: s.port(),
                dst_port: d.port(),
                tcp,
                payload: &ZEROS[..len.min(ZEROS.len())],
                payload_len: len as u32,
                ip_len: 40 + len as u32,
                ttl: 64,
                tunnel: None,
                reassembled: false,
            };
            self.table
                .process(Timestamp(ts), &dec, 54 + len as u32, &mut self.events);
            FlowKey::of(&dec)
        }

        pub fn udp(&mut self, ts: u64, src: &str, dst: &str, len: usize) -> FlowKey {
            self.send(ts, src, dst, Proto::Udp, 0, len)
        }

        /// A TCP segment with ACK (and PSH when it carries data).
        pub fn tcp(&mut self, ts: u64, src: &str, dst: &str, len: usize) -> FlowKey {
            let flags = if len > 0 { ACK | PSH } else { ACK };
            self.send(ts, src, dst, Proto::Tcp, flags, len)
        }

        /// SYN, SYN/ACK `syn_rtt` later, ACK `ack_rtt` after that.
        pub fn handshake(
            &mut self,
            ts: u64,
            client: &str,
            server: &str,
            syn_rtt: u64,
            ack_rtt: u64,
        ) -> FlowKey {
            self.send(ts, client, server, Proto::Tcp, SYN, 0);
            self.send(ts + syn_rtt, server, client, Proto::Tcp, SYN | ACK, 0);
            self.send(ts + syn_rtt + ack_rtt, client, server, Proto::Tcp, ACK, 0)
        }
    }
}

/// A remote-desktop stream held for long is someone's day at a screen.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Flow,
    reasons: &[Reason {
        name: "persistent_stream",
        weight: 20.0,
    }],
    new: |c| Box::new(RemoteDesktop::new(&c.detect.remote_desktop)),
};

impl Detector for RemoteDesktop {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::Identified { key, at, flow, .. } => {
                self.on_identified(scope, key, Some(at), flow)
            }
            Moment::Tick { now, flows } => self.on_tick(scope, now, flows, out),
            Moment::Ended { flow, .. } => self.on_end(scope, flow),
            _ => {}
        }
    }

    fn moments(&self) -> u8 {
        moments::IDENTIFIED | moments::TICK | moments::ENDED
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        RemoteDesktop::evictions(self).to_vec()
    }

    fn sessions(&self) -> Option<&RemoteDesktop> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn figures(up: u64, down: u64, large_up: u64, small_down: u64) -> Figures {
        Figures {
            bytes: [up, down],
            large: [large_up, 0],
            small: [0, small_down],
            active_ns: 0,
        }
    }

    #[test]
    fn screen_side_needs_input_evidence() {
        let c = RemoteDesktopConfig::default();
        assert_eq!(
            role(&c, &figures(50_000_000, 400_000, 30_000, 5_000)),
            Role::Controlled
        );
        // One-way bulk with no small packets back: not called controlled.
        assert_eq!(
            role(&c, &figures(50_000_000, 400_000, 30_000, 0)),
            Role::Undetermined
        );
        let mut rev = figures(400_000, 50_000_000, 0, 0);
        rev.large = [0, 30_000];
        rev.small = [5_000, 0];
        assert_eq!(role(&c, &rev), Role::Controller);
    }

    #[test]
    fn severity_rises_with_span_only_from_outside() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(
            severity(Role::Controlled, false, Duration::from_secs(900)),
            Severity::Medium
        );
        assert_eq!(severity(Role::Controlled, false, h(1)), Severity::High);
        assert_eq!(severity(Role::Controlled, false, h(12)), Severity::Critical);
        assert_eq!(severity(Role::Controlled, true, h(12)), Severity::Info);
        assert_eq!(severity(Role::Undetermined, false, h(1)), Severity::Low);
    }

    /// 13 hours of an RDP-over-UDP session controlled from 192.0.2.70 (CN), one burst a
    /// minute, with a reconnect from a new port: one session, reported at each tier.
    #[test]
    fn thirteen_hours_report_every_tier_once() {
        use testkit::*;
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut rd = RemoteDesktop::new(&RemoteDesktopConfig::default());
        let mut out = Vec::new();
        let mut client = "192.0.2.70:50000";
        let mut identified = BTreeSet::new();
        for minute in 0..13 * 60 {
            if minute == 300 {
                // Reconnect two minutes later from a new port.
                client = "192.0.2.70:50001";
            }
            if (300..302).contains(&minute) {
                continue;
            }
            let t = T0 + minute * MIN;
            wire.udp(t, client, "10.8.0.12:3389", 40);
            wire.udp(t + 100 * MS, client, "10.8.0.12:3389", 40);
            let key = wire.udp(t + 150 * MS, "10.8.0.12:3389", client, 1200);
            wire.udp(t + 151 * MS, "10.8.0.12:3389", client, 1200);
            if identified.insert(key) {
                let f = wire.table.get_mut(&key).unwrap();
                f.app = Some(App::Rdp);
                rd.on_identified(&scope, &key, None, wire.table.get(&key).unwrap());
            }
            rd.on_tick(&scope, Timestamp(t + SEC), &wire.table, &mut out);
        }
        let tiers: Vec<(&str, Severity)> = out
            .iter()
            .map(|e| (e.evidence["tier"].as_str().unwrap(), e.severity))
            .collect();
        assert_eq!(
            tiers,
            [
                ("15m", Severity::Medium),
                ("1h", Severity::High),
                ("4h", Severity::High),
                ("8h", Severity::High),
                ("12h", Severity::Critical),
            ]
        );
        let last = out.last().unwrap();
        assert_eq!(last.evidence["role"], "controlled");
        assert_eq!(last.evidence["flows"], 2);
        assert_eq!(last.evidence["peer_country"], "CN");
        assert_eq!(last.host, Some("10.8.0.12".parse().unwrap()));
        // Five different keys: the tier is part of each finding's identity.
        let keys: BTreeSet<&str> = out.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys.len(), 5);
    }

    /// A pause longer than the reconnect gap ends the session; the next one starts over.
    #[test]
    fn long_pause_starts_a_new_session() {
        use testkit::*;
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut rd = RemoteDesktop::new(&RemoteDesktopConfig::default());
        let mut out = Vec::new();
        // One flow: 10 minutes, a 6-minute pause, 10 minutes; neither part reaches 15.
        for minute in (0..10).chain(16..26) {
            let t = T0 + minute * MIN;
            let key = wire.udp(t, "192.0.2.70:50000", "10.8.0.12:3389", 40);
            if minute == 0 {
                wire.table.get_mut(&key).unwrap().app = Some(App::Rdp);
                rd.on_identified(&scope, &key, None, wire.table.get(&key).unwrap());
            }
            rd.on_tick(&scope, Timestamp(t + SEC), &wire.table, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    /// A session whose flows ended is let go once the reconnect gap has passed.
    #[test]
    fn an_ended_session_goes_after_the_gap() {
        use testkit::*;
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut rd = RemoteDesktop::new(&RemoteDesktopConfig::default());
        let mut out = Vec::new();
        let mut key = None;
        for minute in 0..10 {
            let t = T0 + minute * MIN;
            let k = wire.udp(t, "192.0.2.70:50000", "10.8.0.12:3389", 40);
            if minute == 0 {
                wire.table.get_mut(&k).unwrap().app = Some(App::Rdp);
                rd.on_identified(&scope, &k, None, wire.table.get(&k).unwrap());
            }
            rd.on_tick(&scope, Timestamp(t + SEC), &wire.table, &mut out);
            key = Some(k);
        }
        rd.on_end(&scope, wire.table.get(&key.unwrap()).unwrap());
        let host = "10.8.0.12".parse().unwrap();
        // The last activity was at minute 9: still running at 12, gone at 15.
        rd.on_tick(&scope, Timestamp(T0 + 12 * MIN), &wire.table, &mut out);
        assert_eq!(
            rd.active_app(host, Timestamp(T0 + 12 * MIN)),
            Some(App::Rdp)
        );
        rd.on_tick(&scope, Timestamp(T0 + 15 * MIN), &wire.table, &mut out);
        assert!(rd.sessions.is_empty());
        assert!(out.is_empty(), "{out:?}");
    }

    /// An inside administrator's long session is info, not a farm.
    #[test]
    fn inside_to_inside_is_info() {
        use testkit::*;
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut rd = RemoteDesktop::new(&RemoteDesktopConfig::default());
        let mut out = Vec::new();
        for minute in 0..20 {
            let t = T0 + minute * MIN;
            let key = wire.udp(t, "10.20.0.5:50000", "10.20.0.9:3389", 40);
            if minute == 0 {
                wire.table.get_mut(&key).unwrap().app = Some(App::Rdp);
                rd.on_identified(&scope, &key, None, wire.table.get(&key).unwrap());
            }
            rd.on_tick(&scope, Timestamp(t + SEC), &wire.table, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Info);
        assert_eq!(out[0].evidence["peer_inside"], true);
    }

    /// Media through a TURN relay beside the session: the session is relayed.
    #[test]
    fn turn_relay_beside_the_session() {
        use testkit::*;
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut rd = RemoteDesktop::new(&RemoteDesktopConfig::default());
        let mut out = Vec::new();
        let stun = wire.udp(T0, "10.8.0.19:50100", "192.0.2.74:3478", 20);
        let f = wire.table.get_mut(&stun).unwrap();
        f.app = Some(App::Stun);
        f.details = Some(Box::new(turn_details()));
        rd.on_identified(&scope, &stun, None, wire.table.get(&stun).unwrap());
        for minute in 0..16 {
            let t = T0 + 10 * SEC + minute * MIN;
            let key = wire.udp(t, "10.8.0.19:50200", "192.0.2.75:443", 40);
            if minute == 0 {
                wire.table.get_mut(&key).unwrap().app = Some(App::ChromeRemoteDesktop);
                rd.on_identified(&scope, &key, None, wire.table.get(&key).unwrap());
            }
            rd.on_tick(&scope, Timestamp(t + SEC), &wire.table, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["via"], "turn_relay");
        assert_eq!(out[0].app, Some(App::ChromeRemoteDesktop));
    }

    #[test]
    fn config_parses_durations() {
        let c: RemoteDesktopConfig =
            toml::from_str("min_duration = \"20m\"\ntiers = [\"2h\", \"10m\"]").unwrap();
        let rd = RemoteDesktop::new(&c);
        assert_eq!(
            rd.points,
            vec![Duration::from_secs(1200), Duration::from_secs(7200)]
        );
    }
}
