//! The host's [`ConnTable`] and [`OpenConnections`]: connection state and open connections per
//! service for replay and tests, bounded like the kernel's.

use std::collections::HashMap;

use rst_common::{
    service_counts,
    wire::{ConnKey, ConnState, ServiceKey, ServiceValue, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_SERVICES},
    ConnTable, OpenConnections, ServiceChange,
};

/// A bounded map of connection state, and the open-connection count of each service.
///
/// Where the kernel's connection table forgets the older connection of a pair of slots, this
/// forgets all of them at once when full: cheaper, and equally harmless, since forgotten state
/// only turns observed classifications into inferred ones. The open counts are bounded as the
/// kernel's `SERVICE_OPEN` map is: a service that finds no room is not counted.
#[derive(Debug)]
pub struct HostConnections {
    states: HashMap<ConnKey, ConnState>,
    capacity: usize,
    open: HashMap<ServiceKey, u32>,
    services_capacity: usize,
}

impl HostConnections {
    pub fn with_capacity(capacity: usize) -> Self {
        HostConnections {
            states: HashMap::new(),
            capacity: capacity.max(1),
            open: HashMap::new(),
            services_capacity: DEFAULT_MAX_SERVICES as usize,
        }
    }

    /// Applies a tracked service change to the open counts and adds what it counts to
    /// `services`, as the kernel programs do to the interval's service table.
    pub fn count_service(&mut self, services: &mut HashMap<ServiceKey, ServiceValue>, change: &ServiceChange) {
        if let Some(counts) = service_counts(self, change) {
            services.entry(change.service).or_default().merge(&counts);
        }
    }
}

impl Default for HostConnections {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_MAX_CONNECTIONS as usize)
    }
}

impl ConnTable for HostConnections {
    fn get(&mut self, key: &ConnKey) -> Option<&mut ConnState> {
        self.states.get_mut(key)
    }

    fn put(&mut self, key: &ConnKey, state: &ConnState) {
        if self.states.len() >= self.capacity && !self.states.contains_key(key) {
            self.states.clear();
        }
        self.states.insert(*key, *state);
    }
}

impl OpenConnections for HostConnections {
    fn open(&mut self, service: &ServiceKey) -> Option<u32> {
        if self.open.len() >= self.services_capacity && !self.open.contains_key(service) {
            return None;
        }
        let open = self.open.entry(*service).or_default();
        let before = *open;
        *open = open.saturating_add(1);
        Some(before)
    }

    fn close(&mut self, service: &ServiceKey) {
        if let Some(open) = self.open.get_mut(service) {
            *open = open.saturating_sub(1);
        }
    }

    fn open_now(&mut self, service: &ServiceKey) -> u32 {
        self.open.get(service).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(port: u16) -> ServiceKey {
        ServiceKey { port, ..ServiceKey::default() }
    }

    #[test]
    fn open_counts_never_go_below_zero_and_a_full_store_counts_no_new_service() {
        let mut host = HostConnections { services_capacity: 2, ..HostConnections::default() };
        host.close(&service(1));
        assert_eq!(host.open_now(&service(1)), 0, "a close of nothing counted");
        assert_eq!(host.open(&service(1)), Some(0));
        assert_eq!(host.open(&service(1)), Some(1));
        for _ in 0..3 {
            host.close(&service(1));
        }
        assert_eq!(host.open_now(&service(1)), 0, "three closes of two connections");
        assert_eq!(host.open(&service(1)), Some(0), "and the next accept finds none open");
        assert_eq!(host.open(&service(2)), Some(0));
        assert_eq!(host.open(&service(3)), None, "no room for a third service");
        assert_eq!(host.open_now(&service(3)), 0);
        assert_eq!(host.open(&service(2)), Some(1), "the services it holds still count");
    }
}
