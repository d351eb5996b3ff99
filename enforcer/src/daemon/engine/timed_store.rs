//! The store as a round sees it: each commit timed for the metrics, with the operations a
//! failed clock-step commit left behind going first.

use std::time::Instant;

use super::Engine;
use crate::{
    daemon::{ledger::Ledger, round::BlockStore},
    metrics::Metrics,
    store::{Store, StoreError, StoreOp},
};

/// The store, timing each commit for the metrics.
pub(super) struct TimedStore<'a> {
    store: &'a mut Store,
    metrics: &'a Metrics,
    carry: &'a mut Vec<StoreOp>,
}

impl BlockStore for TimedStore<'_> {
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = if self.carry.is_empty() {
            self.store.commit(ops)
        } else {
            let all: Vec<StoreOp> = self.carry.iter().chain(ops).cloned().collect();
            self.store.commit(&all)
        };
        if result.is_ok() {
            self.carry.clear();
        }
        self.metrics.store_commit(started.elapsed());
        result
    }
}

impl Engine {
    pub(super) fn timed_store(
        &mut self,
    ) -> (&mut Ledger, TimedStore<'_>, &mut crate::datapath::BlockMaps) {
        let store = TimedStore {
            store: &mut self.store,
            metrics: &self.metrics,
            carry: &mut self.carry,
        };
        (&mut self.ledger, store, self.dp.maps_mut())
    }
}
