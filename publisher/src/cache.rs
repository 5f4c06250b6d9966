//! The per-user free/busy cache and the rules that keep it equal to PostgreSQL.
//!
//! A user enters the cache on the first request: a snapshot of the `freebusy`
//! rows together with the per-user event sequence it reflects (read in one
//! transaction, `store`). From then on the change events keep it current: an
//! event is applied only when its `sequence` is the next one after the cached
//! sequence; older ones (redeliveries, events the snapshot already holds) are
//! skipped, and a gap drops the user so the next request loads a fresh
//! snapshot. Events that arrive while a user's snapshot is being loaded are
//! held and applied to it once it is there, so none falls between the two.
//!
//! Bounded by bytes as well as by users: each entry's heap is estimated
//! ([`UserFreeBusy::bytes`]), and past the budget users are dropped (and loaded
//! again when asked for). Unknown users (no event, no busy time) are never
//! kept: their names cost memory and tell nothing, and their first event
//! needs no cached state (the next request loads them). A user with too many
//! periods to keep is held only as a marker ([`Lookup::Large`]), answered
//! from PostgreSQL one window at a time.
//!
//! No I/O here: the loader is passed in, which keeps the rules testable.

use chrono::{DateTime, Utc};
use imipflow_schema::BusyPeriod;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A change event, as far as the cache cares: whose, which per-user sequence,
/// and the free/busy change it carries (`None` for the other kinds, which
/// only advance the sequence).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub user: String,
    pub sequence: i64,
    pub freebusy: Option<FreeBusyChange>,
}

/// `freebusy.changed` data: one UID's periods added and removed.
#[derive(Debug, Clone, PartialEq)]
pub struct FreeBusyChange {
    pub added: Vec<BusyPeriod>,
    pub removed: Vec<BusyPeriod>,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// At or below the cached sequence: already reflected.
    Skipped,
    Applied,
    /// Beyond the next sequence: an event is missing, the user must reload.
    Gap,
}

/// A snapshot as loaded from PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The user's last event sequence (`user_events.last_seq`, 0 when none).
    pub sequence: i64,
    pub periods: Vec<BusyPeriod>,
}

/// What a load found.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Snapshot(Snapshot),
    /// More periods than the cache keeps for one user.
    Large,
}

/// What [`Cache::get`] answers.
#[derive(Debug, Clone)]
pub enum Lookup {
    FreeBusy(Arc<UserFreeBusy>),
    /// Read this user's windows from PostgreSQL.
    Large,
}

/// Estimated heap bytes of one cached period: the `BusyPeriod` and its key
/// in a B-tree node (about 150 bytes with the node's share), plus the UID
/// twice (in the key and in the period).
fn period_bytes(p: &BusyPeriod) -> usize {
    160 + 2 * p.uid.len()
}

/// Estimated bytes of a cache entry apart from its periods: the map slot,
/// the name, the `Arc`.
fn entry_bytes(user: &str) -> usize {
    128 + user.len()
}

/// Key of a busy period, as in the `freebusy` table: UID and instance (the
/// original start of a recurrence instance, else the start).
type Key = (String, DateTime<Utc>);

fn key(p: &BusyPeriod) -> Key {
    (p.uid.clone(), p.recurrence_id.unwrap_or(p.start))
}

/// One user's free/busy as the publisher holds it.
#[derive(Debug, Clone)]
pub struct UserFreeBusy {
    /// The last event sequence reflected.
    pub sequence: i64,
    /// The sequence at which the periods last changed (or were loaded): the
    /// basis of the ETag.
    pub version: i64,
    /// When this publisher last saw the periods change: the DTSTAMP.
    pub stamp: DateTime<Utc>,
    periods: BTreeMap<Key, BusyPeriod>,
    /// Estimated heap bytes of `periods`.
    bytes: usize,
}

impl UserFreeBusy {
    pub fn new(snapshot: Snapshot, now: DateTime<Utc>) -> Self {
        let periods: BTreeMap<Key, BusyPeriod> =
            snapshot.periods.into_iter().map(|p| (key(&p), p)).collect();
        UserFreeBusy {
            sequence: snapshot.sequence,
            version: snapshot.sequence,
            stamp: now,
            bytes: periods.values().map(period_bytes).sum(),
            periods,
        }
    }

    /// Estimated heap bytes of the periods held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Periods held (all time).
    pub fn len(&self) -> usize {
        self.periods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.periods.is_empty()
    }

    /// A user is known when they have any event or any busy time; anything
    /// else is unknown (404, or empty with `IMIP_PUBLISHER_UNKNOWN_USERS=empty`).
    pub fn is_known(&self) -> bool {
        self.sequence > 0 || !self.periods.is_empty()
    }

    /// Periods intersecting [from, to), ordered as `imip-ctl freebusy` orders them.
    pub fn in_window(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<BusyPeriod> {
        let mut out: Vec<BusyPeriod> = self
            .periods
            .values()
            .filter(|p| p.start < p.end && p.start < to && p.end > from)
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Applies one event of this user by the sequence rule.
    pub fn apply(&mut self, event: &Event, now: DateTime<Utc>) -> Step {
        if event.sequence <= self.sequence {
            return Step::Skipped;
        }
        if event.sequence != self.sequence + 1 {
            return Step::Gap;
        }
        self.sequence = event.sequence;
        if let Some(change) = &event.freebusy {
            // Removals first: a moved instance is removed and added under one key.
            for p in &change.removed {
                if let Some(old) = self.periods.remove(&key(p)) {
                    self.bytes -= period_bytes(&old);
                }
            }
            for p in &change.added {
                self.bytes += period_bytes(p);
                if let Some(old) = self.periods.insert(key(p), p.clone()) {
                    self.bytes -= period_bytes(&old);
                }
            }
            self.version = event.sequence;
            self.stamp = now;
        }
        Step::Applied
    }
}

enum Slot {
    /// A snapshot is being read; events that arrive meanwhile wait here.
    /// Waiting requests subscribe to `done`, which is dropped when the load ends.
    Loading {
        token: u64,
        held: Vec<Event>,
        done: watch::Sender<()>,
    },
    Ready(Arc<UserFreeBusy>),
    /// Too many periods to keep: answered from PostgreSQL. Holds no state, so
    /// no event can make it wrong; a free/busy event drops it all the same,
    /// so that a user who shrank is cached again.
    Large,
}

impl Slot {
    fn bytes(&self, user: &str) -> usize {
        entry_bytes(user)
            + match self {
                Slot::Ready(fb) => fb.bytes(),
                Slot::Loading { .. } | Slot::Large => 0,
            }
    }
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, Slot>,
    /// Estimated bytes of every Ready and Large entry.
    bytes: usize,
    next_token: u64,
}

impl Inner {
    fn remove(&mut self, user: &str) -> Option<Slot> {
        let slot = self.users.remove(user)?;
        if !matches!(slot, Slot::Loading { .. }) {
            self.bytes -= slot.bytes(user);
        }
        Some(slot)
    }

    fn insert(&mut self, user: &str, slot: Slot) {
        if !matches!(slot, Slot::Loading { .. }) {
            self.bytes += slot.bytes(user);
        }
        if let Some(old) = self.users.insert(user.to_owned(), slot)
            && !matches!(old, Slot::Loading { .. })
        {
            self.bytes -= old.bytes(user);
        }
    }

    /// Drops one entry that is not loading (any: a dropped user is simply
    /// loaded again); false when there is none.
    fn evict_one(&mut self, keep: &str) -> bool {
        let victim = self
            .users
            .iter()
            .find(|(u, s)| !matches!(s, Slot::Loading { .. }) && u.as_str() != keep)
            .map(|(u, _)| u.clone());
        match victim {
            Some(u) => {
                self.remove(&u);
                true
            }
            None => false,
        }
    }
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub users: usize,
    /// Estimated bytes held.
    pub bytes: usize,
    pub loads: u64,
    pub applied: u64,
    pub skipped: u64,
    pub gaps: u64,
    /// Users dropped to stay within the budget.
    pub evictions: u64,
}

/// Every cached user, shared by the HTTP handlers and the event follower.
pub struct Cache {
    inner: Mutex<Inner>,
    stats: Mutex<Stats>,
    max_users: usize,
    max_bytes: usize,
}

impl Cache {
    pub fn new(max_users: usize, max_bytes: usize) -> Self {
        Cache {
            inner: Mutex::new(Inner::default()),
            stats: Mutex::new(Stats::default()),
            max_users: max_users.max(1),
            max_bytes,
        }
    }

    pub fn stats(&self) -> Stats {
        let (users, bytes) = {
            let inner = self.inner.lock().expect("cache lock");
            (inner.users.len(), inner.bytes)
        };
        Stats {
            users,
            bytes,
            ..*self.stats.lock().expect("stats lock")
        }
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }

    /// Keeps `user`'s new entry of `bytes` only if it fits the budget, making
    /// room by dropping others.
    fn admit(&self, inner: &mut Inner, user: &str, slot: Slot) {
        let bytes = slot.bytes(user);
        if bytes > self.max_bytes {
            return;
        }
        let mut evicted = 0;
        while (inner.bytes + bytes > self.max_bytes || inner.users.len() >= self.max_users)
            && inner.evict_one(user)
        {
            evicted += 1;
        }
        if evicted > 0 {
            self.count(|s| s.evictions += evicted);
        }
        if inner.bytes + bytes <= self.max_bytes {
            inner.insert(user, slot);
        }
    }

    /// The user's free/busy: from the cache, or loaded with `load` (once, even
    /// when several requests ask at the same time).
    pub async fn get<F, Fut, E>(&self, user: &str, load: F) -> Result<Lookup, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded, E>>,
    {
        let token = loop {
            let mut wait = {
                let mut inner = self.inner.lock().expect("cache lock");
                match inner.users.get(user) {
                    Some(Slot::Ready(fb)) => return Ok(Lookup::FreeBusy(fb.clone())),
                    Some(Slot::Large) => return Ok(Lookup::Large),
                    Some(Slot::Loading { done, .. }) => done.subscribe(),
                    None => {
                        // Loads in progress count against the number of users
                        // too: a flood of distinct names cannot pile them up.
                        if inner.users.len() >= self.max_users {
                            inner.evict_one(user);
                        }
                        inner.next_token += 1;
                        let token = inner.next_token;
                        inner.insert(
                            user,
                            Slot::Loading {
                                token,
                                held: Vec::new(),
                                done: watch::channel(()).0,
                            },
                        );
                        break token;
                    }
                }
            };
            // Returns when the loader's sender is dropped (its load ended).
            let _ = wait.changed().await;
        };
        self.count(|s| s.loads += 1);
        let result = load().await;
        let mut inner = self.inner.lock().expect("cache lock");
        let ours =
            matches!(inner.users.get(user), Some(Slot::Loading { token: t, .. }) if *t == token);
        let held = if ours {
            match inner.remove(user) {
                Some(Slot::Loading { held, .. }) => held,
                _ => Vec::new(),
            }
        } else {
            // Cleared while loading (the follower lost its place): serve this
            // snapshot once, cache nothing.
            Vec::new()
        };
        let snapshot = match result? {
            Loaded::Snapshot(s) => s,
            Loaded::Large => {
                if ours {
                    self.admit(&mut inner, user, Slot::Large);
                }
                return Ok(Lookup::Large);
            }
        };
        let now = Utc::now();
        let mut fb = UserFreeBusy::new(snapshot, now);
        let mut complete = ours;
        for event in &held {
            match fb.apply(event, now) {
                Step::Gap => {
                    complete = false;
                    self.count(|s| s.gaps += 1);
                    break;
                }
                Step::Applied => self.count(|s| s.applied += 1),
                Step::Skipped => self.count(|s| s.skipped += 1),
            }
        }
        let fb = Arc::new(fb);
        if complete && fb.is_known() {
            self.admit(&mut inner, user, Slot::Ready(fb.clone()));
        }
        Ok(Lookup::FreeBusy(fb))
    }

    /// Applies an event from the stream: to the cached user, held for a user
    /// being loaded, ignored for anyone else.
    pub fn apply(&self, event: Event) -> Option<Step> {
        let now = Utc::now();
        let mut inner = self.inner.lock().expect("cache lock");
        let (step, before, after) = match inner.users.get_mut(&event.user) {
            None => return None,
            Some(Slot::Loading { held, .. }) => {
                held.push(event);
                return None;
            }
            Some(Slot::Large) => {
                if event.freebusy.is_some() {
                    inner.remove(&event.user);
                }
                return None;
            }
            Some(Slot::Ready(fb)) => {
                let fb = Arc::make_mut(fb);
                let before = fb.bytes();
                let step = fb.apply(&event, now);
                (step, before, fb.bytes())
            }
        };
        inner.bytes = inner.bytes + after - before;
        if step == Step::Gap || inner.bytes > self.max_bytes {
            // A gap needs a reload; a user grown past the budget is dropped
            // (and loaded again, within it or as a large user).
            inner.remove(&event.user);
        }
        drop(inner);
        self.count(|s| match step {
            Step::Applied => s.applied += 1,
            Step::Skipped => s.skipped += 1,
            Step::Gap => s.gaps += 1,
        });
        Some(step)
    }

    /// Forgets every user (the follower may have missed events); loads in
    /// progress finish for their requests but are not cached.
    pub fn clear(&self) {
        let mut inner = self.inner.lock().expect("cache lock");
        inner.users.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imipflow_schema::FbType;
    use std::convert::Infallible;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn period(uid: &str, start: &str, end: &str) -> BusyPeriod {
        BusyPeriod {
            start: t(start),
            end: t(end),
            fbtype: FbType::Busy,
            uid: uid.into(),
            recurrence_id: None,
        }
    }

    fn fb_event(seq: i64, added: Vec<BusyPeriod>, removed: Vec<BusyPeriod>) -> Event {
        Event {
            user: "a@x".into(),
            sequence: seq,
            freebusy: Some(FreeBusyChange { added, removed }),
        }
    }

    fn other_event(seq: i64) -> Event {
        Event {
            user: "a@x".into(),
            sequence: seq,
            freebusy: None,
        }
    }

    async fn load(cache: &Cache, snapshot: Snapshot) -> Arc<UserFreeBusy> {
        match cache
            .get("a@x", || async {
                Ok::<_, Infallible>(Loaded::Snapshot(snapshot))
            })
            .await
            .unwrap()
        {
            Lookup::FreeBusy(fb) => fb,
            Lookup::Large => panic!("large"),
        }
    }

    fn free_busy(l: Lookup) -> Arc<UserFreeBusy> {
        match l {
            Lookup::FreeBusy(fb) => fb,
            Lookup::Large => panic!("large"),
        }
    }

    const W: (&str, &str) = ("2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z");

    fn window(fb: &UserFreeBusy) -> Vec<BusyPeriod> {
        fb.in_window(t(W.0), t(W.1))
    }

    #[tokio::test]
    async fn next_sequence_applies_older_skip_gap_drops() {
        let cache = Cache::new(10, usize::MAX);
        let p1 = period("u1", "2027-03-01T09:00:00Z", "2027-03-01T10:00:00Z");
        let fb = load(
            &cache,
            Snapshot {
                sequence: 2,
                periods: vec![p1.clone()],
            },
        )
        .await;
        assert!(fb.is_known());
        assert_eq!(fb.version, 2);
        let p2 = period("u2", "2027-03-02T09:00:00Z", "2027-03-02T10:00:00Z");
        assert_eq!(cache.apply(other_event(2)), Some(Step::Skipped));
        assert_eq!(cache.apply(other_event(3)), Some(Step::Applied));
        assert_eq!(
            cache.apply(fb_event(4, vec![p2.clone()], vec![])),
            Some(Step::Applied)
        );
        // A redelivery of 4 changes nothing.
        assert_eq!(
            cache.apply(fb_event(4, vec![p2.clone()], vec![])),
            Some(Step::Skipped)
        );
        let fb = load(&cache, Snapshot::default()).await;
        assert_eq!((fb.sequence, fb.version), (4, 4));
        assert_eq!(window(&fb), vec![p1.clone(), p2.clone()]);
        assert_eq!(
            cache.apply(fb_event(5, vec![], vec![p1.clone()])),
            Some(Step::Applied)
        );
        assert_eq!(window(&*load(&cache, Snapshot::default()).await), vec![p2]);
        // 7 after 5: 6 is missing, the user is dropped and loaded again.
        assert_eq!(cache.apply(other_event(7)), Some(Step::Gap));
        assert_eq!(cache.apply(other_event(8)), None);
        let fb = load(
            &cache,
            Snapshot {
                sequence: 8,
                periods: vec![],
            },
        )
        .await;
        assert_eq!(fb.sequence, 8);
        assert!(window(&fb).is_empty());
        assert_eq!(cache.stats().gaps, 1);
    }

    #[tokio::test]
    async fn a_moved_instance_is_removed_then_added_under_one_key() {
        let cache = Cache::new(10, usize::MAX);
        let rid = Some(t("2027-03-01T09:00:00Z"));
        let old = BusyPeriod {
            recurrence_id: rid,
            ..period("s", "2027-03-01T09:00:00Z", "2027-03-01T10:00:00Z")
        };
        let moved = BusyPeriod {
            recurrence_id: rid,
            ..period("s", "2027-03-01T14:00:00Z", "2027-03-01T15:00:00Z")
        };
        load(
            &cache,
            Snapshot {
                sequence: 1,
                periods: vec![old.clone()],
            },
        )
        .await;
        cache.apply(fb_event(2, vec![moved.clone()], vec![old]));
        assert_eq!(
            window(&*load(&cache, Snapshot::default()).await),
            vec![moved]
        );
    }

    #[tokio::test]
    async fn events_during_a_load_are_held_and_applied_to_the_snapshot() {
        let cache = Arc::new(Cache::new(10, usize::MAX));
        let p1 = period("u1", "2027-03-01T09:00:00Z", "2027-03-01T10:00:00Z");
        let p2 = period("u2", "2027-03-02T09:00:00Z", "2027-03-02T10:00:00Z");
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let c = cache.clone();
        let snap = Snapshot {
            sequence: 3,
            periods: vec![p1.clone()],
        };
        let loader = tokio::spawn(async move {
            free_busy(
                c.get("a@x", || async move {
                    wait.await.unwrap();
                    Ok::<_, Infallible>(Loaded::Snapshot(snap))
                })
                .await
                .unwrap(),
            )
        });
        tokio::task::yield_now().await;
        while cache.stats().loads == 0 {
            tokio::task::yield_now().await;
        }
        // 3 is in the snapshot already; 4 is not.
        assert_eq!(cache.apply(fb_event(3, vec![p1.clone()], vec![])), None);
        assert_eq!(cache.apply(fb_event(4, vec![p2.clone()], vec![])), None);
        // A second request waits for the first load instead of loading again.
        let c = cache.clone();
        let second = tokio::spawn(async move {
            free_busy(
                c.get("a@x", || async { Err::<Loaded, _>("loaded twice") })
                    .await
                    .unwrap(),
            )
        });
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        let fb = loader.await.unwrap();
        assert_eq!(fb.sequence, 4);
        assert_eq!(window(&fb), vec![p1, p2]);
        assert_eq!(second.await.unwrap().sequence, 4);
        assert_eq!(cache.stats().loads, 1);
    }

    #[tokio::test]
    async fn unknown_users_are_not_cached_and_their_first_event_needs_no_entry() {
        let cache = Cache::new(10, usize::MAX);
        assert!(!load(&cache, Snapshot::default()).await.is_known());
        assert_eq!(cache.stats().users, 0);
        // Their first events find nobody to apply to; the next request loads
        // what PostgreSQL holds by then.
        assert_eq!(cache.apply(other_event(1)), None);
        let p = period("u1", "2027-03-01T09:00:00Z", "2027-03-01T10:00:00Z");
        let fb = load(
            &cache,
            Snapshot {
                sequence: 2,
                periods: vec![p.clone()],
            },
        )
        .await;
        assert!(fb.is_known());
        assert_eq!(window(&fb), vec![p]);
        assert_eq!(cache.stats().users, 1);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_byte_budget() {
        let periods = |uid: &str| -> Vec<BusyPeriod> {
            (0..100)
                .map(|i| {
                    let start = t("2027-03-01T00:00:00Z") + chrono::Duration::hours(i);
                    BusyPeriod {
                        start,
                        end: start + chrono::Duration::minutes(30),
                        fbtype: FbType::Busy,
                        uid: uid.into(),
                        recurrence_id: Some(start),
                    }
                })
                .collect()
        };
        let one = UserFreeBusy::new(
            Snapshot {
                sequence: 1,
                periods: periods("u"),
            },
            Utc::now(),
        )
        .bytes();
        // Room for about three such users.
        let cache = Cache::new(1000, 3 * one + 3 * 200);
        for u in ["a@x", "b@x", "c@x", "d@x", "e@x"] {
            let snapshot = Snapshot {
                sequence: 1,
                periods: periods("u"),
            };
            cache
                .get(u, || async {
                    Ok::<_, Infallible>(Loaded::Snapshot(snapshot))
                })
                .await
                .unwrap();
            assert!(cache.stats().bytes <= 3 * one + 3 * 200);
        }
        let s = cache.stats();
        assert_eq!(s.users, 3);
        assert_eq!(s.evictions, 2);
        // One user bigger than the whole budget is served, not kept.
        let big = Cache::new(1000, one / 2);
        let snapshot = Snapshot {
            sequence: 1,
            periods: periods("u"),
        };
        let fb = free_busy(
            big.get("a@x", || async {
                Ok::<_, Infallible>(Loaded::Snapshot(snapshot))
            })
            .await
            .unwrap(),
        );
        assert_eq!(fb.len(), 100);
        assert_eq!(big.stats().users, 0);
    }

    #[tokio::test]
    async fn a_large_user_is_a_marker_dropped_by_their_next_free_busy_event() {
        let cache = Cache::new(10, usize::MAX);
        let l = cache
            .get("a@x", || async { Ok::<_, Infallible>(Loaded::Large) })
            .await
            .unwrap();
        assert!(matches!(l, Lookup::Large));
        let again = cache
            .get("a@x", || async { Err::<Loaded, _>("loaded twice") })
            .await
            .unwrap();
        assert!(matches!(again, Lookup::Large));
        assert_eq!(cache.apply(other_event(5)), None);
        assert_eq!(cache.stats().users, 1);
        assert_eq!(cache.apply(fb_event(6, vec![], vec![])), None);
        assert_eq!(cache.stats().users, 0);
    }

    #[tokio::test]
    async fn a_failed_load_caches_nothing_and_clear_forgets_everyone() {
        let cache = Cache::new(10, usize::MAX);
        let r = cache
            .get("a@x", || async { Err::<Loaded, _>("down") })
            .await;
        assert_eq!(r.unwrap_err(), "down");
        assert_eq!(cache.stats().users, 0);
        load(
            &cache,
            Snapshot {
                sequence: 1,
                periods: vec![],
            },
        )
        .await;
        assert_eq!(cache.stats().users, 1);
        cache.clear();
        assert_eq!(cache.apply(other_event(1)), None);
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_max_users() {
        let cache = Cache::new(2, usize::MAX);
        for u in ["a@x", "b@x", "c@x"] {
            let known = Snapshot {
                sequence: 1,
                periods: vec![],
            };
            cache
                .get(u, || async { Ok::<_, Infallible>(Loaded::Snapshot(known)) })
                .await
                .unwrap();
        }
        assert_eq!(cache.stats().users, 2);
    }

    #[test]
    fn the_window_keeps_periods_that_intersect_it() {
        let fb = UserFreeBusy::new(
            Snapshot {
                sequence: 1,
                periods: vec![
                    period("before", "2026-12-31T23:00:00Z", "2027-01-01T00:00:00Z"),
                    period("edge", "2026-12-31T23:00:00Z", "2027-01-01T00:30:00Z"),
                    period("after", "2028-01-01T00:00:00Z", "2028-01-01T01:00:00Z"),
                ],
            },
            Utc::now(),
        );
        let uids: Vec<String> = window(&fb).into_iter().map(|p| p.uid).collect();
        assert_eq!(uids, vec!["edge"]);
    }
}
