//! One pull's progress kept for followers (pull on run, issue 9). RunTask pulls a missing
//! image inside the container's actor; `rctl run` then follows that very pull through the
//! scheduler (FollowTaskPull) rather than starting a second one, so it shows the download
//! that is really happening. A follower may arrive at any time, even after the end: the
//! feed keeps every layer's latest state and how the pull ended, not a history.

use std::collections::HashMap;

use rctl_api::pb;
use tokio::sync::watch;

use super::{LayerEvent, LayerPhase};

/// What a follower sees of a pull.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullView {
    /// Every layer's latest event, in the order the layers were first reported.
    pub layers: Vec<LayerEvent>,
    /// How the pull ended (the error is one line); None while it goes on.
    pub end: Option<Result<pb::PullResult, String>>,
}

/// What a follower was last sent of each layer (by blob digest).
pub type Sent = HashMap<String, (LayerPhase, u64)>;

impl PullView {
    /// Takes `e` as its layer's latest state.
    pub fn apply(&mut self, e: LayerEvent) {
        match self.layers.iter_mut().find(|l| l.digest == e.digest) {
            Some(l) => *l = e,
            None => self.layers.push(e),
        }
    }

    /// The layer events a follower that was sent `sent` has not seen (changed layers, in
    /// layer order), recorded in `sent` as sent.
    pub fn news(&self, sent: &mut Sent) -> Vec<LayerEvent> {
        self.layers
            .iter()
            .filter(|l| {
                let now = (l.phase, l.done);
                sent.insert(l.digest.clone(), now) != Some(now)
            })
            .cloned()
            .collect()
    }
}

/// One pull's progress: written by the puller, read by any number of followers. Progress
/// in between two looks of a slow follower is coalesced (it sees the latest state).
#[derive(Debug)]
pub struct PullFeed {
    tx: watch::Sender<PullView>,
}

impl Default for PullFeed {
    fn default() -> Self {
        Self {
            tx: watch::channel(PullView::default()).0,
        }
    }
}

impl PullFeed {
    pub fn layer(&self, e: LayerEvent) {
        self.tx.send_modify(|v| v.apply(e));
    }

    pub fn end(&self, r: Result<pb::PullResult, String>) {
        self.tx.send_modify(|v| v.end = Some(r));
    }

    /// A follower's view: the state so far is seen as changed at once. Its sender gone
    /// (the puller dropped, e.g. the agent stopping) ends the follow.
    pub fn subscribe(&self) -> watch::Receiver<PullView> {
        let mut rx = self.tx.subscribe();
        rx.mark_changed();
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(digest: &str, phase: LayerPhase, done: u64) -> LayerEvent {
        LayerEvent {
            digest: digest.into(),
            phase,
            done,
            total: 100,
        }
    }

    #[test]
    fn a_follower_sees_each_layers_changes_once_in_layer_order() {
        let mut v = PullView::default();
        v.apply(ev("a", LayerPhase::Waiting, 0));
        v.apply(ev("b", LayerPhase::Waiting, 0));
        let mut sent = Sent::new();
        let digests = |es: Vec<LayerEvent>| es.into_iter().map(|e| e.digest).collect::<Vec<_>>();
        assert_eq!(digests(v.news(&mut sent)), ["a", "b"]);
        assert!(v.news(&mut sent).is_empty(), "nothing new");
        v.apply(ev("b", LayerPhase::Downloading, 10));
        v.apply(ev("b", LayerPhase::Downloading, 60));
        let news = v.news(&mut sent);
        assert_eq!(news, [ev("b", LayerPhase::Downloading, 60)], "coalesced");
        v.apply(ev("a", LayerPhase::Done, 100));
        assert_eq!(v.news(&mut sent), [ev("a", LayerPhase::Done, 100)]);
    }

    #[test]
    fn a_late_follower_gets_every_layer_at_its_end_state() {
        let feed = PullFeed::default();
        feed.layer(ev("a", LayerPhase::Downloading, 50));
        feed.layer(ev("a", LayerPhase::Done, 100));
        feed.end(Err("pull x: not found".into()));
        let mut rx = feed.subscribe();
        assert!(rx.has_changed().unwrap());
        let v = rx.borrow_and_update().clone();
        assert_eq!(v.layers, [ev("a", LayerPhase::Done, 100)]);
        assert_eq!(v.end, Some(Err("pull x: not found".into())));
    }
}
