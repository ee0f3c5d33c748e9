//! `remote_desktop` / `reverse_session`: an interactive session the account host opened to
//! the outside (SSH, telnet, a raw TCP shell, a reverse tunnel such as `ssh -R`) in which the
//! outside end does the typing. No firewall stops a connection the laptop opens, so an
//! outsider driving the laptop through one is seen only in who starts the conversation.
//!
//! A burst is an ON period (see [`crate::flows::activity`]) that starts while the other
//! direction has been idle too: one side takes the turn. When a person types into the host,
//! their keystroke starts the burst and the host (one short leg from the sensor) answers
//! within milliseconds: the shell's echo. In the look-alike, someone at the host typing
//! out, the host starts the bursts and the outside's echo takes a round trip beyond the
//! sensor, so it is never a burst of its own. SSH keeps this shape with `ssh -R`: the outer
//! connection is the host's (originator), the keystrokes arrive from the responder and the
//! host's sshd echoes them.
//!
//! A flow is reported when it is TCP from an account host to an outside address, carries
//! no known non-interactive protocol (unidentified, or SSH, telnet or a remote-desktop
//! protocol), the outside started at least `min_bursts` bursts that the host answered
//! within `answer_within`, those are at least `min_outside_share` of all bursts, and at
//! least `min_input_share` of the outside's data packets are input-sized (≤ 100 B). It is
//! reported once at medium and once more, at high, when it has been open `long_lived`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Deserialize;

use crate::decode::Proto;
use crate::detect::{Detector, Moment, Reason, Registered, Stage, moments};
use crate::event::{Event, Kind, Severity};
use crate::flows::flow::{ORIG, RESP};
use crate::flows::{Flow, humantime_serde};
use crate::timestamp::Timestamp;

use super::Scope;
use super::remote_desktop::{flow_ref, is_account_host, round2, with_place};

/// Answer delays kept per flow for the median: the latest ones.
const DELAY_WINDOW: usize = 32;

/// `[detect.reverse_session]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReverseSessionConfig {
    /// The host's first data after the outside started a burst within this is its answer.
    /// Default `"50ms"`.
    #[serde(with = "humantime_serde")]
    pub answer_within: Duration,
    /// Answered bursts the outside must have started. Default 4.
    pub min_bursts: u32,
    /// Share of all bursts the outside must have started. Default 0.5.
    pub min_outside_share: f64,
    /// Share of the outside's data packets that must be input-sized. Default 0.5.
    pub min_input_share: f64,
    /// Open this long, a reported session is reported again at high. Default `"1h"`.
    #[serde(with = "humantime_serde")]
    pub long_lived: Duration,
    /// Flows followed at once; past it the oldest is dropped (and counted). Default 65536.
    pub max_flows: usize,
}

impl Default for ReverseSessionConfig {
    fn default() -> ReverseSessionConfig {
        ReverseSessionConfig {
            answer_within: Duration::from_millis(50),
            min_bursts: 4,
            min_outside_share: 0.5,
            min_input_share: 0.5,
            long_lived: Duration::from_secs(3600),
            max_flows: 65536,
        }
    }
}

impl ReverseSessionConfig {
    /// See [`super::check`].
    pub fn validate(&self) -> Result<(), String> {
        use super::check::{not_zero, share};
        not_zero("answer_within", self.answer_within)?;
        not_zero("min_bursts", self.min_bursts)?;
        share("min_outside_share", self.min_outside_share)?;
        share("min_input_share", self.min_input_share)?;
        not_zero("long_lived", self.long_lived)?;
        not_zero("max_flows", self.max_flows)
    }
}

/// What one followed flow's bursts showed so far.
#[derive(Default)]
struct Track {
    /// Each direction's ON periods when last shown: the one that grew just resumed.
    resumes: [u32; 2],
    /// Start of the outside's burst the host has not answered yet.
    waiting: Option<Timestamp>,
    /// Bursts started by the outside and answered by the host, and by the host.
    answered: u32,
    outside_started: u32,
    host_started: u32,
    /// The latest answer delays, ns.
    delays: VecDeque<u64>,
    reported: Option<Severity>,
}

impl Track {
    fn median_delay_ms(&self) -> f64 {
        let mut d: Vec<u64> = self.delays.iter().copied().collect();
        d.sort_unstable();
        d.get(d.len() / 2).map_or(0.0, |&ns| ns as f64 / 1e6)
    }

    fn outside_share(&self) -> f64 {
        let all = self.outside_started + self.host_started;
        if all == 0 {
            0.0
        } else {
            f64::from(self.outside_started) / f64::from(all)
        }
    }
}

pub struct ReverseSession {
    config: ReverseSessionConfig,
    /// ON-period gap of the flow table (`[flows] idle_threshold`).
    idle: Duration,
    /// Followed flows by their sequence number (oldest first).
    flows: BTreeMap<u64, Track>,
    /// Flows dropped at `max_flows`.
    evicted: u64,
}

/// Protocols a person can type through; unidentified bytes may be a raw shell.
fn interactive(flow: &Flow) -> bool {
    flow.app.is_none_or(|a| a.is_interactive())
}

/// Whether `side` of the flow has sent nothing for `idle` before `ts`.
fn idle_at(flow: &Flow, side: usize, ts: Timestamp, idle: Duration) -> bool {
    flow.dir[side]
        .last_data()
        .is_none_or(|last| ts.since(last) >= idle)
}

impl ReverseSession {
    pub fn new(config: &ReverseSessionConfig, idle: Duration) -> ReverseSession {
        ReverseSession {
            config: config.clone(),
            idle,
            flows: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// One direction of `flow` started an ON period at `ts`.
    pub fn on_resume(
        &mut self,
        scope: &Scope<'_>,
        flow: &Flow,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        let (host, outside) = (flow.orig.0, flow.resp.0);
        if flow.proto != Proto::Tcp
            || !scope.network.is_inside(host)
            || scope.network.is_inside(outside)
            || !is_account_host(scope, host, ts)
        {
            return;
        }
        if !self.flows.contains_key(&flow.seq) && self.flows.len() >= self.config.max_flows {
            self.flows.pop_first();
            self.evicted += 1;
        }
        let t = self.flows.entry(flow.seq).or_default();
        let now = [flow.dir[ORIG].resumes, flow.dir[RESP].resumes];
        let from_outside = now[RESP] > t.resumes[RESP];
        t.resumes = now;
        // The packet that resumed is the latest data of its direction, so the other
        // direction's last data says whether it was idle before it.
        if from_outside {
            let host_idle = idle_at(flow, ORIG, ts, self.idle);
            if host_idle {
                t.outside_started += 1;
                t.waiting = Some(ts);
            }
            return;
        }
        if let Some(start) = t.waiting.take() {
            // The host was idle since before `start`, so this is its first data since.
            let delay = ts.since(start);
            if delay <= self.config.answer_within {
                t.answered += 1;
                if t.delays.len() == DELAY_WINDOW {
                    t.delays.pop_front();
                }
                t.delays.push_back(delay.as_nanos() as u64);
            }
        } else if idle_at(flow, RESP, ts, self.idle) {
            t.host_started += 1;
        }
        let c = &self.config;
        let input = &flow.dir[RESP];
        let input_share = input.small_pkts as f64 / input.data_pkts.max(1) as f64;
        let duration = ts.since(flow.first);
        let severity = if duration >= c.long_lived {
            Severity::High
        } else {
            Severity::Medium
        };
        if t.answered < c.min_bursts
            || t.outside_share() < c.min_outside_share
            || input_share < c.min_input_share
            || !interactive(flow)
            || t.reported >= Some(severity)
        {
            return;
        }
        t.reported = Some(severity);
        out.push(report(scope, flow, t, input_share, severity, ts));
    }

    pub fn on_end(&mut self, flow: &Flow) {
        self.flows.remove(&flow.seq);
    }
}

fn report(
    scope: &Scope<'_>,
    flow: &Flow,
    t: &Track,
    input_share: f64,
    severity: Severity,
    ts: Timestamp,
) -> Event {
    let (host, outside) = (flow.orig.0, flow.resp.0);
    let duration = Duration::from_secs(ts.since(flow.first).as_secs());
    let what = flow.app.map_or("a TCP session", |a| a.as_str());
    let mut e = Event::new(
        ts,
        Kind::RemoteDesktop,
        "reverse_session",
        severity,
        severity.as_str(),
    );
    e.host = Some(host);
    e.flow = Some(flow_ref(flow));
    e.app = flow.app;
    e.summary = format!(
        "{host} opened {what} to {outside}, and the outside end types into it: it started {} \
         bursts the host answered in {} ms (median), open {}",
        t.answered,
        round2(t.median_delay_ms()),
        humantime::format_duration(duration),
    );
    let e = e
        .evidence("keystrokes_from_outside", flow.dir[RESP].small_pkts)
        .evidence("answered_bursts", t.answered)
        .evidence("median_answer_ms", round2(t.median_delay_ms()))
        .evidence("outside_burst_share", round2(t.outside_share()))
        .evidence("outside_input_share", round2(input_share))
        .evidence("duration_s", duration.as_secs());
    with_place(scope, e, "outside", outside)
}

/// An outsider typing into a session the host opened.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Flow,
    reasons: &[Reason {
        name: "reverse_session",
        weight: 30.0,
    }],
    new: |c| {
        Box::new(ReverseSession::new(
            &c.detect.reverse_session,
            c.flows.idle_threshold,
        ))
    },
};

impl Detector for ReverseSession {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::Resumed { flow, ts, .. } => self.on_resume(scope, flow, ts, out),
            Moment::Ended { flow, .. } => self.on_end(flow),
            _ => {}
        }
    }

    fn moments(&self) -> u8 {
        moments::RESUMED | moments::ENDED
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![("reverse_session_flows", self.evicted)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::detect::remote_desktop::testkit::*;
    use crate::flows::FlowEvent;

    const HOST: &str = "10.8.0.12:41752";
    const OUTSIDE: &str = "198.51.100.20:22";

    /// Who types, and how long the other end takes to answer each keystroke.
    #[derive(Clone, Copy)]
    struct Typing {
        outside_types: bool,
        answer_ms: u64,
    }

    /// A session `originator` opened to `responder`: `commands` commands 3 s apart, each
    /// six keystrokes 200 ms apart answered by 36-byte echoes, then 2 kB of output from
    /// the side typed into. The flow carries `app`.
    fn session(
        rs: &mut ReverseSession,
        wire: &mut Wire,
        (originator, responder): (&str, &str),
        app: Option<App>,
        typing: Typing,
        commands: u64,
    ) -> Vec<Event> {
        let world = World::new();
        let scope = world.scope();
        let mut out = Vec::new();
        let key = wire.handshake(T0, originator, responder, 50 * MS, 2 * MS);
        wire.table.get_mut(&key).unwrap().app = app;
        let (typist, shell) = match (typing.outside_types, originator == HOST) {
            (true, true) | (false, false) => (responder, originator),
            _ => (originator, responder),
        };
        let mut packets = Vec::new();
        for c in 0..commands {
            let base = T0 + SEC + c * 3 * SEC;
            for k in 0..6 {
                let at = base + k * 200 * MS;
                packets.push((at, typist, shell, 36));
                packets.push((at + typing.answer_ms * MS, shell, typist, 36));
            }
            packets.push((base + 1300 * MS, shell, typist, 2000));
        }
        packets.sort_by_key(|p| p.0);
        for (at, src, dst, len) in packets {
            wire.tcp(at, src, dst, len);
            for ev in std::mem::take(&mut wire.events) {
                if let FlowEvent::Resumed { key, ts, .. } = ev {
                    let flow = wire.table.get(&key).unwrap();
                    rs.on_resume(&scope, flow, ts, &mut out);
                }
            }
        }
        out
    }

    fn detector() -> ReverseSession {
        ReverseSession::new(&ReverseSessionConfig::default(), Duration::from_millis(500))
    }

    const FROM_OUTSIDE: Typing = Typing {
        outside_types: true,
        answer_ms: 3,
    };

    #[test]
    fn an_outsider_typing_into_a_session_the_host_opened() {
        let mut rs = detector();
        let out = session(
            &mut rs,
            &mut Wire::new(),
            (HOST, OUTSIDE),
            Some(App::Ssh),
            FROM_OUTSIDE,
            5,
        );
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(
            (e.reason, e.severity, e.host),
            (
                "reverse_session",
                Severity::Medium,
                Some("10.8.0.12".parse().unwrap())
            )
        );
        assert_eq!(e.evidence["answered_bursts"], 4);
        assert_eq!(e.evidence["median_answer_ms"], 3.0);
        assert_eq!(e.evidence["outside_burst_share"], 1.0);
        assert_eq!(e.evidence["outside"], "198.51.100.20");
        // Reported as the host answers the fourth command's first key.
        assert_eq!(e.evidence["keystrokes_from_outside"], 3 * 6 + 1);
    }

    #[test]
    fn unidentified_bytes_may_be_a_raw_shell() {
        let mut rs = detector();
        let out = session(
            &mut rs,
            &mut Wire::new(),
            (HOST, OUTSIDE),
            None,
            FROM_OUTSIDE,
            5,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn look_alikes_are_silent() {
        let quiet = |peers, app, typing, commands| {
            session(
                &mut detector(),
                &mut Wire::new(),
                peers,
                app,
                typing,
                commands,
            )
            .is_empty()
        };
        let ssh = Some(App::Ssh);
        // Typed at the host, echoed from beyond the sensor.
        let inside = Typing {
            outside_types: false,
            answer_ms: 120,
        };
        assert!(quiet((HOST, OUTSIDE), ssh, inside, 5));
        // The outside opened it: an inbound session, the remote-desktop detector's.
        let inbound = ("198.51.100.20:41000", "10.8.0.12:22");
        assert!(quiet(inbound, ssh, FROM_OUTSIDE, 5));
        // A protocol nobody types through (a server pushing, the host acknowledging).
        assert!(quiet((HOST, OUTSIDE), Some(App::Tls), FROM_OUTSIDE, 5));
        // The host takes longer than `answer_within` to answer: not an echo.
        let slow = Typing {
            outside_types: true,
            answer_ms: 80,
        };
        assert!(quiet((HOST, OUTSIDE), ssh, slow, 5));
        // Three answered bursts are not yet a session.
        assert!(quiet((HOST, OUTSIDE), ssh, FROM_OUTSIDE, 3));
        // Between two inside hosts: no outsider.
        assert!(quiet((HOST, "10.20.0.5:22"), ssh, FROM_OUTSIDE, 5));
    }

    #[test]
    fn flows_past_the_limit_are_counted() {
        let config = ReverseSessionConfig {
            max_flows: 1,
            ..ReverseSessionConfig::default()
        };
        let mut rs = ReverseSession::new(&config, Duration::from_millis(500));
        let mut wire = Wire::new();
        session(
            &mut rs,
            &mut wire,
            (HOST, OUTSIDE),
            Some(App::Ssh),
            FROM_OUTSIDE,
            1,
        );
        let other = ("10.8.0.12:41753", OUTSIDE);
        session(&mut rs, &mut wire, other, Some(App::Ssh), FROM_OUTSIDE, 1);
        assert_eq!(rs.flows.len(), 1);
        assert_eq!(Detector::evictions(&rs), [("reverse_session_flows", 1)]);
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let ok = ReverseSessionConfig::default();
        assert!(ok.validate().is_ok());
        let bad = [
            ReverseSessionConfig {
                min_bursts: 0,
                ..ok.clone()
            },
            ReverseSessionConfig {
                min_outside_share: 1.5,
                ..ok.clone()
            },
            ReverseSessionConfig {
                answer_within: Duration::ZERO,
                ..ok.clone()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
