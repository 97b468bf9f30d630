//! Publishing Kubernetes Events without letting them fail a reconciliation, and without
//! keeping every Event in memory.
//!
//! Events are for people running `kubectl describe`; losing one (RBAC missing for
//! `events.k8s.io`, a busy API server) must not stop the operator from converging, so
//! publishing failures are logged and swallowed here, in one place.
//!
//! # Why not kube-runtime's `Recorder`
//!
//! kube-runtime's `Recorder` folds a repeat into the earlier Event's series, which is
//! what we want, but it keeps a clone of every Event it published (object reference,
//! note, metadata) for six minutes, and only evicts when something is published again.
//! A thousand new MailDomains publish several Events each, so the MailDomain controller's
//! shared recorder held about 19 MiB after applying 1,000 domains (heaptrack), the
//! largest part of the operator's growth per domain. It also folds on type, reason and
//! action alone and keeps the *first* note, so a shared recorder would later report
//! "scaled from 3 to 5" when the pool was scaled from 5 to 7.
//!
//! [`Publisher`] keeps the folding (the same type, reason, action, note and objects
//! within [`SERIES_WINDOW`] of the last occurrence patch the earlier Event's
//! `series.count` instead of creating a new Event) but remembers only a 16-byte
//! fingerprint, the Event's name and namespace and the count, for at most
//! [`SERIES_CAPACITY`] Events; entries older than the window are dropped. Because the
//! note is part of the fingerprint, every published note is true and one publisher can
//! be shared by all reconciliations of a controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};

/// The `reportingController` of every Event the operator publishes.
pub const REPORTING_CONTROLLER: &str = "smtpfleet-operator";

/// How long after its last occurrence a repeat is still folded into an Event's series.
/// client-go's event correlator aggregates over ten minutes; kube-runtime uses six.
pub const SERIES_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The most Events one publisher remembers for folding (client-go's correlator keeps
/// 4,096 too). When full, the one seen longest ago is forgotten: its next repeat is a
/// new Event, which is only less tidy. Bounds the memory at a few hundred KiB however
/// many objects the operator serves.
pub const SERIES_CAPACITY: usize = 4096;

/// The reporter of every Event: [`REPORTING_CONTROLLER`], with the pod name (from
/// `POD_NAME`, set through the downward API in the chart) as the instance so that
/// events from different operator replicas can be told apart.
pub fn reporter() -> Reporter {
    Reporter {
        controller: REPORTING_CONTROLLER.into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// Builds a Normal event.
pub fn normal(reason: &str, action: &str, note: impl Into<String>) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    }
}

/// Builds a Warning event.
pub fn warning(reason: &str, action: &str, note: impl Into<String>) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    }
}

/// Publishes `events` about `regarding`, logging (not returning) failures.
pub async fn publish_all(publisher: &Publisher, regarding: &ObjectReference, events: &[Event]) {
    for event in events {
        if let Err(err) = publisher.publish(event, regarding).await {
            tracing::warn!(
                reason = %event.reason,
                object = regarding.name.as_deref().unwrap_or_default(),
                error = %err,
                "could not publish event"
            );
        }
    }
}

/// Publishes Events on `events.k8s.io/v1`, folding repeats into series (see the module
/// documentation). Cheap to clone; clones share what they remember.
#[derive(Clone)]
pub struct Publisher {
    client: kube::Client,
    reporter: Reporter,
    series: Arc<Mutex<SeriesCache>>,
}

impl Publisher {
    /// A publisher with [`SERIES_WINDOW`] and [`SERIES_CAPACITY`].
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Arc::new(Mutex::new(SeriesCache::new(SERIES_WINDOW, SERIES_CAPACITY))),
        }
    }

    fn series(&self) -> MutexGuard<'_, SeriesCache> {
        // Only a cache: one left by a panic is still usable.
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `event` about `regarding`: a new Event, or the next count of the
    /// series of the same Event published within the window. Objects without a
    /// namespace get their Events in `default`, as with kube-runtime.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = Fingerprint::of(event, regarding);
        let fold = self.series().fold(key, Instant::now());
        if let Fold::Repeat {
            name,
            namespace,
            count,
        } = fold
        {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            // Everything but the series is immutable on events.k8s.io/v1.
            let patch = serde_json::json!({
                "series": { "count": count, "lastObservedTime": MicroTime(Timestamp::now()) },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.series()
                        .record(key, name, namespace, count, Instant::now());
                    return Ok(());
                }
                // Deleted meanwhile (Events expire, namespaces go): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => self.series().forget(&key),
                Err(e) => return Err(e),
            }
        }
        let body = self.new_event(event, regarding);
        let namespace = body.metadata.namespace.clone().unwrap_or_default();
        let name = body.metadata.name.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &body).await?;
        self.series()
            .record(key, name, namespace, 1, Instant::now());
        Ok(())
    }

    /// The Event kube-runtime's `Recorder` would create: named after the object and the
    /// time, in the object's namespace.
    fn new_event(&self, event: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            metadata: ObjectMeta {
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..K8sEvent::default()
        }
    }
}

/// What identifies repeats of one Event: a digest of its type, reason, action, note and
/// objects. 128 bits of SHA-256: a collision (which would count one Event as a repeat of
/// another) is not a practical concern, and it is far smaller than the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fingerprint([u8; 16]);

impl Fingerprint {
    pub(crate) fn of(event: &Event, regarding: &ObjectReference) -> Self {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        // Length-prefixed, so that no two different field lists give the same bytes.
        let mut field = |value: Option<&str>| match value {
            None => digest.update(&[0]),
            Some(v) => {
                digest.update(&[1]);
                digest.update(&(v.len() as u64).to_le_bytes());
                digest.update(v.as_bytes());
            }
        };
        field(Some(match event.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }));
        field(Some(&event.reason));
        field(Some(&event.action));
        field(event.note.as_deref());
        for object in std::iter::once(Some(regarding)).chain([event.secondary.as_ref()]) {
            match object {
                None => field(None),
                Some(o) => {
                    field(Some(""));
                    field(o.api_version.as_deref());
                    field(o.kind.as_deref());
                    field(o.namespace.as_deref());
                    field(o.name.as_deref());
                    field(o.uid.as_deref());
                }
            }
        }
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest.finish().as_ref()[..16]);
        Self(bytes)
    }
}

/// What to do with an Event about to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fold {
    /// Nothing alike within the window: create a new Event.
    Create,
    /// A repeat: patch Event `name` in `namespace` to series count `count`.
    Repeat {
        name: String,
        namespace: String,
        count: i32,
    },
}

/// One remembered Event.
#[derive(Debug)]
struct Series {
    name: String,
    namespace: String,
    count: i32,
    last_seen: Instant,
}

/// The Events published recently, by fingerprint: the pure part of [`Publisher`].
/// Entries are recorded only once the API server has accepted the Event, so a failed
/// creation is not patched later.
#[derive(Debug)]
pub(crate) struct SeriesCache {
    window: Duration,
    capacity: usize,
    entries: HashMap<Fingerprint, Series>,
}

impl SeriesCache {
    pub(crate) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn live(&self, series: &Series, now: Instant) -> bool {
        now.saturating_duration_since(series.last_seen) < self.window
    }

    /// Whether an Event with `key` published `now` is a repeat, and of which Event.
    pub(crate) fn fold(&mut self, key: Fingerprint, now: Instant) -> Fold {
        match self.entries.get(&key) {
            Some(s) if self.live(s, now) => Fold::Repeat {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                count: s.count.saturating_add(1),
            },
            Some(_) => {
                self.entries.remove(&key);
                Fold::Create
            }
            None => Fold::Create,
        }
    }

    /// Remembers that Event `name` in `namespace` has been seen `count` times, the last
    /// `now`. Drops what is out of the window first and, when still full, the Event seen
    /// longest ago.
    pub(crate) fn record(
        &mut self,
        key: Fingerprint,
        name: String,
        namespace: String,
        count: i32,
        now: Instant,
    ) {
        let window = self.window;
        self.entries
            .retain(|_, s| now.saturating_duration_since(s.last_seen) < window);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        // A burst leaves a large table behind; give it back once mostly empty.
        if self.entries.capacity() > 64 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
        self.entries.insert(
            key,
            Series {
                name,
                namespace,
                count,
                last_seen: now,
            },
        );
    }

    /// Forgets `key` (its Event is gone).
    pub(crate) fn forget(&mut self, key: &Fingerprint) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("smtpfleet.io/v1alpha1".into()),
            kind: Some("MailDomain".into()),
            namespace: Some("mail".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    fn key(reason: &str, note: &str, name: &str) -> Fingerprint {
        Fingerprint::of(&normal(reason, "Reconcile", note), &object(name, "u-1"))
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn fingerprint_covers_every_field_that_makes_an_event_different() {
        let base = key("DKIMKeyGenerated", "generated s1", "a");
        assert_eq!(base, key("DKIMKeyGenerated", "generated s1", "a"));
        assert_ne!(base, key("DKIMKeyGenerated", "generated s2", "a"));
        assert_ne!(base, key("DKIMKeyReady", "generated s1", "a"));
        assert_ne!(base, key("DKIMKeyGenerated", "generated s1", "b"));
        let regarding = object("a", "u-1");
        assert_ne!(
            base,
            Fingerprint::of(
                &warning("DKIMKeyGenerated", "Reconcile", "generated s1"),
                &regarding
            )
        );
        assert_ne!(
            base,
            Fingerprint::of(
                &normal("DKIMKeyGenerated", "Other", "generated s1"),
                &regarding
            )
        );
        // A domain deleted and created again under the same name is another object.
        assert_ne!(
            base,
            Fingerprint::of(
                &normal("DKIMKeyGenerated", "Reconcile", "generated s1"),
                &object("a", "u-2")
            )
        );
        let mut related = normal("DKIMKeyGenerated", "Reconcile", "generated s1");
        related.secondary = Some(object("pool", "u-9"));
        assert_ne!(base, Fingerprint::of(&related, &regarding));
        let empty_note = normal("DKIMKeyGenerated", "Reconcile", "");
        let mut no_note = normal("DKIMKeyGenerated", "Reconcile", "");
        no_note.note = None;
        assert_ne!(
            Fingerprint::of(&empty_note, &regarding),
            Fingerprint::of(&no_note, &regarding)
        );
        // Field boundaries matter: "ab"+"c" is not "a"+"bc".
        assert_ne!(key("ab", "c", "a"), key("a", "bc", "a"));
    }

    #[test]
    fn a_repeat_within_the_window_extends_the_series() {
        let mut cache = SeriesCache::new(10 * MIN, 16);
        let k = key("Scaled", "from 3 to 5", "pool");
        let t0 = Instant::now();
        assert_eq!(cache.fold(k, t0), Fold::Create);
        cache.record(k, "pool.1".into(), "mail".into(), 1, t0);
        let repeat = Fold::Repeat {
            name: "pool.1".into(),
            namespace: "mail".into(),
            count: 2,
        };
        assert_eq!(cache.fold(k, t0 + 9 * MIN), repeat);
        cache.record(k, "pool.1".into(), "mail".into(), 2, t0 + 9 * MIN);
        // The window runs from the last occurrence.
        assert_eq!(
            cache.fold(k, t0 + 18 * MIN),
            Fold::Repeat {
                name: "pool.1".into(),
                namespace: "mail".into(),
                count: 3,
            }
        );
        // Another note is another Event.
        assert_eq!(
            cache.fold(key("Scaled", "from 5 to 7", "pool"), t0),
            Fold::Create
        );
    }

    #[test]
    fn nothing_is_folded_before_it_was_published() {
        let mut cache = SeriesCache::new(10 * MIN, 16);
        let k = key("Scaled", "from 3 to 5", "pool");
        let t0 = Instant::now();
        // The creation failed: nothing recorded, the next try creates again.
        assert_eq!(cache.fold(k, t0), Fold::Create);
        assert_eq!(cache.fold(k, t0), Fold::Create);
        cache.record(k, "pool.1".into(), "mail".into(), 1, t0);
        cache.forget(&k);
        assert_eq!(cache.fold(k, t0), Fold::Create);
    }

    #[test]
    fn entries_expire_after_the_window() {
        let mut cache = SeriesCache::new(10 * MIN, 16);
        let t0 = Instant::now();
        let first = key("DKIMKeyGenerated", "s1", "a");
        cache.record(first, "a.1".into(), "mail".into(), 1, t0);
        assert_eq!(cache.fold(first, t0 + 10 * MIN), Fold::Create);
        assert_eq!(cache.len(), 0);
        // Recording anything drops what is out of the window, so a burst does not stay.
        cache.record(first, "a.1".into(), "mail".into(), 1, t0);
        for i in 0..10 {
            let k = key("DKIMKeyGenerated", "s1", &format!("d{i}"));
            cache.record(k, format!("d{i}.1"), "mail".into(), 1, t0 + MIN);
        }
        assert_eq!(cache.len(), 11);
        let late = key("DKIMKeyGenerated", "s1", "late");
        cache.record(late, "late.1".into(), "mail".into(), 1, t0 + 10 * MIN);
        assert_eq!(
            cache.len(),
            11,
            "the first expired, the ten of minute one stay"
        );
        cache.record(late, "late.1".into(), "mail".into(), 2, t0 + 11 * MIN);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_forgets_the_event_seen_longest_ago() {
        let mut cache = SeriesCache::new(10 * MIN, 3);
        let t0 = Instant::now();
        let keys: Vec<Fingerprint> = (0..4).map(|i| key("R", "n", &format!("d{i}"))).collect();
        cache.record(keys[0], "d0".into(), "mail".into(), 1, t0);
        cache.record(
            keys[1],
            "d1".into(),
            "mail".into(),
            1,
            t0 + Duration::from_secs(1),
        );
        cache.record(
            keys[2],
            "d2".into(),
            "mail".into(),
            1,
            t0 + Duration::from_secs(2),
        );
        // d0 repeats: it is now the most recent.
        cache.record(
            keys[0],
            "d0".into(),
            "mail".into(),
            2,
            t0 + Duration::from_secs(3),
        );
        assert_eq!(cache.len(), 3);
        cache.record(
            keys[3],
            "d3".into(),
            "mail".into(),
            1,
            t0 + Duration::from_secs(4),
        );
        assert_eq!(cache.len(), 3);
        let now = t0 + Duration::from_secs(5);
        assert_eq!(
            cache.fold(keys[1], now),
            Fold::Create,
            "d1 was seen longest ago"
        );
        assert!(matches!(
            cache.fold(keys[0], now),
            Fold::Repeat { count: 3, .. }
        ));
        assert!(matches!(
            cache.fold(keys[2], now),
            Fold::Repeat { count: 2, .. }
        ));
        assert!(matches!(
            cache.fold(keys[3], now),
            Fold::Repeat { count: 2, .. }
        ));
    }

    #[test]
    fn thousands_of_objects_stay_within_the_capacity() {
        let mut cache = SeriesCache::new(10 * MIN, SERIES_CAPACITY);
        let t0 = Instant::now();
        for i in 0..SERIES_CAPACITY + 100 {
            let k = key("DKIMKeyGenerated", "s1", &format!("d{i:05}"));
            cache.record(k, format!("d{i:05}.1"), "mail".into(), 1, t0);
        }
        assert_eq!(cache.len(), SERIES_CAPACITY);
    }
}
