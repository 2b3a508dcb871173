//! The host's [`ConnTable`]: connection state for replay and tests, bounded like the kernel's.

use std::collections::HashMap;

use rst_common::{
    wire::{ConnKey, ConnState, DEFAULT_MAX_CONNECTIONS},
    ConnTable,
};

/// A bounded map of connection state. Where the kernel's table forgets the older connection of
/// a pair of slots, this forgets all of them at once when full: cheaper, and equally harmless, since forgotten
/// state only turns observed classifications into inferred ones.
#[derive(Debug)]
pub struct HostConnections {
    states: HashMap<ConnKey, ConnState>,
    capacity: usize,
}

impl HostConnections {
    pub fn with_capacity(capacity: usize) -> Self {
        HostConnections { states: HashMap::new(), capacity: capacity.max(1) }
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
