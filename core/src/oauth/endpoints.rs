//! What the engine knows about providers' OAuth endpoints: discovery
//! documents fetched, discoveries in flight and their waiters, and the
//! loopback listeners of browser logins with theirs.
//!
//! Both kinds of request are single flight: the first waiter owns the
//! effect, the others queue, and ending the request hands every waiter back
//! at once, so no waiter is left behind.

use std::collections::BTreeMap;

use crate::operations::task::TaskId;

/// Endpoints learned from a discovery document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Endpoints {
    pub(crate) authorize: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) device: Option<String>,
}

/// A loopback listener shared by the browser sessions on its port.
#[derive(Debug)]
struct LoopbackListener {
    path: String,
    running: bool,
    /// Tasks waiting for it to start; the first one asked for it.
    waiters: Vec<TaskId>,
}

/// How a task stands with a port's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerWait {
    /// It runs: go on.
    Running,
    /// It is starting: the task waits for it.
    Queued,
    /// Nobody asked for it yet: the task waits, and starts it.
    Start,
}

/// Discovery documents, discoveries in flight and loopback listeners.
///
/// Invariants: a provider is in `discovering` only with a non-empty waiter
/// list whose first task owns the request; a listener waits for its start
/// with at least one waiter, and once running has none.
#[derive(Debug, Default)]
pub(crate) struct OauthEndpoints {
    /// Discovery documents fetched, by provider.
    discovered: BTreeMap<String, Endpoints>,
    /// Discovery requests in flight: provider → waiting tasks (the first
    /// one owns the request).
    discovering: BTreeMap<String, Vec<TaskId>>,
    /// Loopback listeners by port.
    listeners: BTreeMap<u16, LoopbackListener>,
}

impl OauthEndpoints {
    /// The endpoints discovered for `provider`.
    pub(crate) fn discovered(&self, provider: &str) -> Option<&Endpoints> {
        self.discovered.get(provider)
    }

    /// Makes `task` wait for `provider`'s discovery if one is in flight;
    /// false when none is.
    pub(crate) fn wait_discovery(&mut self, provider: &str, task: TaskId) -> bool {
        match self.discovering.get_mut(provider) {
            Some(waiters) => {
                waiters.push(task);
                true
            }
            None => false,
        }
    }

    /// Records that `task` fetches `provider`'s discovery document.
    pub(crate) fn start_discovery(&mut self, provider: &str, task: TaskId) {
        self.discovering.insert(provider.to_owned(), vec![task]);
    }

    /// The provider whose discovery `task` fetches.
    pub(crate) fn discovery_of(&self, task: TaskId) -> Option<String> {
        self.discovering
            .iter()
            .find(|(_, w)| w.first() == Some(&task))
            .map(|(p, _)| p.clone())
    }

    /// `provider`'s discovery ended (with the endpoints when it worked):
    /// its waiters, in arrival order.
    pub(crate) fn end_discovery(
        &mut self,
        provider: &str,
        found: Option<Endpoints>,
    ) -> Vec<TaskId> {
        if let Some(endpoints) = found {
            self.discovered.insert(provider.to_owned(), endpoints);
        }
        self.discovering.remove(provider).unwrap_or_default()
    }

    /// Makes `task` wait for the listener on `port` unless it runs.
    pub(crate) fn wait_listener(&mut self, port: u16, path: String, task: TaskId) -> ListenerWait {
        match self.listeners.get_mut(&port) {
            Some(l) if l.running => ListenerWait::Running,
            Some(l) => {
                l.waiters.push(task);
                ListenerWait::Queued
            }
            None => {
                self.listeners.insert(
                    port,
                    LoopbackListener {
                        path,
                        running: false,
                        waiters: vec![task],
                    },
                );
                ListenerWait::Start
            }
        }
    }

    /// The port of the starting listener `task` waits for.
    pub(crate) fn starting_port_of(&self, task: TaskId) -> Option<u16> {
        self.listeners
            .iter()
            .find(|(_, l)| !l.running && l.waiters.contains(&task))
            .map(|(p, _)| *p)
    }

    /// The host started the listener on `port` (or failed to, and it is
    /// forgotten): its waiters, in arrival order.
    pub(crate) fn listener_started(&mut self, port: u16, ok: bool) -> Vec<TaskId> {
        match self.listeners.get_mut(&port) {
            Some(l) if ok => {
                l.running = true;
                std::mem::take(&mut l.waiters)
            }
            _ => self
                .listeners
                .remove(&port)
                .map(|l| l.waiters)
                .unwrap_or_default(),
        }
    }

    /// The redirect path of the listener running on `port`.
    pub(crate) fn running_path(&self, port: u16) -> Option<&str> {
        self.listeners
            .get(&port)
            .filter(|l| l.running)
            .map(|l| l.path.as_str())
    }

    /// Forgets the running listener on `port`; true when there was one (the
    /// caller stops it).
    pub(crate) fn remove_running(&mut self, port: u16) -> bool {
        if self.running_path(port).is_some() {
            self.listeners.remove(&port);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 1455;

    #[test]
    fn a_listener_is_started_once_queues_its_waiters_and_then_runs() {
        let mut e = OauthEndpoints::default();
        let (a, b, other) = (TaskId(1), TaskId(2), TaskId(9));
        assert_eq!(e.wait_listener(PORT, "/cb".into(), a), ListenerWait::Start);
        assert_eq!(e.wait_listener(PORT, "/cb".into(), b), ListenerWait::Queued);
        assert_eq!(e.starting_port_of(a), Some(PORT));
        assert_eq!(e.starting_port_of(b), Some(PORT));
        assert_eq!(e.starting_port_of(other), None, "not a waiter");
        assert_eq!(e.running_path(PORT), None, "still starting");
        assert_eq!(e.listener_started(PORT, true), vec![a, b]);
        assert_eq!(e.running_path(PORT), Some("/cb"));
        assert_eq!(e.starting_port_of(a), None, "no longer waiting");
        assert_eq!(
            e.wait_listener(PORT, "/cb".into(), other),
            ListenerWait::Running
        );
        assert!(e.remove_running(PORT));
        assert!(!e.remove_running(PORT));
        assert_eq!(
            e.wait_listener(PORT, "/cb".into(), other),
            ListenerWait::Start
        );
    }

    #[test]
    fn a_listener_that_failed_to_start_is_forgotten_with_its_waiters() {
        let mut e = OauthEndpoints::default();
        let (a, b) = (TaskId(1), TaskId(2));
        assert_eq!(e.wait_listener(PORT, "/cb".into(), a), ListenerWait::Start);
        assert_eq!(e.wait_listener(PORT, "/cb".into(), b), ListenerWait::Queued);
        assert_eq!(e.listener_started(PORT, false), vec![a, b]);
        assert_eq!(e.running_path(PORT), None);
        assert_eq!(e.starting_port_of(a), None);
        assert_eq!(
            e.wait_listener(PORT, "/cb".into(), b),
            ListenerWait::Start,
            "asked anew"
        );
    }
}
