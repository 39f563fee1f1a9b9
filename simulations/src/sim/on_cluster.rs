//! The shop on a cluster: the workload goes to whoever leads, as a client's would, and the
//! shop's working memory (pools, live orders) starts over from the leader's state each time
//! leadership moves, as the actors do when a node activates. Between workload steps the
//! seed injures the cluster: crashes of any node, restarts, partitions, elections,
//! snapshots (with purges) and failed syncs.

use super::cluster::{Cluster, Commit};
use super::{describe, Backend, Crashed, Rng, World};

/// Writes in a row whose outcome stays unknown before liveness is declared lost (a leader
/// is re-found, and every fault healed after `cluster::LEADER_MOVES_HEAL`, between them).
const FAILED_WRITES_IN_A_ROW_MAX: u64 = 200;
/// Network ticks after each step, at most (the cluster keeps moving between requests).
const TICKS_PER_STEP_MAX: u64 = 4;

impl World {
    fn cluster(&mut self) -> &mut Cluster {
        self.with_cluster(|cluster, _| cluster)
    }

    fn cluster_ref(&self) -> &Cluster {
        match &self.backend {
            Backend::Cluster(cluster) => cluster,
            Backend::Single { .. } => unreachable!("only on a cluster"),
        }
    }

    /// The cluster and the seed's generator, borrowed together.
    fn with_cluster<'a, T: 'a>(
        &'a mut self,
        work: impl FnOnce(&'a mut Cluster, &'a mut Rng) -> T,
    ) -> T {
        match &mut self.backend {
            Backend::Cluster(cluster) => work(cluster, &mut self.rng),
            Backend::Single { .. } => unreachable!("only on a cluster"),
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// Whether the shop has a node to run on now (a crash of its leader takes it away
    /// until the next step's `ensure_shop`).
    pub(super) fn shop_runs(&self) -> bool {
        match &self.backend {
            Backend::Cluster(cluster) => cluster.shop.is_some(),
            Backend::Single { .. } => true,
        }
    }

    /// Makes the shop run on the active leader, with nothing of its own in flight; when the
    /// leader changed, the shop starts over from its state. False: no leader could be had.
    pub(super) fn ensure_shop(&mut self) -> bool {
        if !self.is_cluster() {
            return true;
        }
        let leader = self.with_cluster(|cluster, rng| {
            let current = cluster.active_leader();
            let settled = current.is_some_and(|(id, _)| cluster.decided(id));
            if settled && current == cluster.shop {
                current
            } else {
                cluster.ensure_leader(rng)
            }
        });
        let Some(leader) = leader else {
            self.violation(format!(
                "liveness: no active leader after {} network moves with every fault healed",
                super::cluster::LEADER_MOVES_MAX
            ));
            self.stuck = true;
            return false;
        };
        if self.cluster().shop != Some(leader) {
            self.cluster().shop = Some(leader);
            let step = self.step;
            let applied = self.cluster().shop_store().applied_index();
            self.cluster().note(format_args!(
                "step {step}: the shop reseeds on {leader:?} at applied {applied}"
            ));
            self.reseed();
        }
        true
    }

    /// A write whose outcome the client does not know: once a leader has settled every
    /// earlier write, the shop starts over from its state and takes its word.
    fn resync(&mut self) {
        self.cluster().shop = None;
        self.ensure_shop();
    }

    pub(super) fn commit_to_cluster(&mut self, event: &engine::Event) -> Result<(), Crashed> {
        if self.stuck {
            return Err(Crashed);
        }
        let sync_failure_per_mille = self.faults.sync_failure_per_mille;
        let outcome = self.with_cluster(|cluster, rng| {
            if rng.per_mille(sync_failure_per_mille) {
                let running = cluster.running();
                let id = running[rng.below(running.len() as u64) as usize];
                cluster.fail_sync(id);
            }
            let outcome = cluster.commit(event, rng);
            cluster.reap_failed(rng);
            outcome
        });
        match outcome {
            Commit::Acked(index) => {
                self.failed_writes_in_a_row = 0;
                self.acked_through = self.acked_through.max(index);
                Ok(())
            }
            Commit::Refused(v) => {
                self.violation(format!("engine refused {}: {v}", describe(event)));
                Err(Crashed)
            }
            Commit::Unknown => {
                self.outcome.unknown_outcomes += 1;
                self.failed_writes_in_a_row += 1;
                if self.failed_writes_in_a_row > FAILED_WRITES_IN_A_ROW_MAX {
                    // A leader that takes no write at all is an outage, not bad luck (a
                    // broken chain once made every write commit as a no-op, for ever).
                    self.violation(format!(
                        "liveness: {} writes in a row failed",
                        self.failed_writes_in_a_row
                    ));
                    self.stuck = true;
                    return Err(Crashed);
                }
                self.resync();
                Err(Crashed)
            }
        }
    }

    /// A fault of the cluster's, if the seed picks one for this step.
    pub(super) fn cluster_fault(&mut self) -> bool {
        let torn_percent = self.faults.torn_tail_percent;
        self.with_cluster(|cluster, rng| {
            let faults = cluster.faults.clone();
            let running = cluster.running();
            let down = cluster.down();
            let pick = |rng: &mut Rng, ids: &[u64]| ids[rng.below(ids.len() as u64) as usize];
            if !running.is_empty() && rng.per_mille(faults.node_crash_per_mille) {
                let id = pick(rng, &running);
                let damage = rng.percent(torn_percent);
                cluster.crash(id, damage, rng);
            } else if !down.is_empty() && rng.percent(10) {
                let id = pick(rng, &down);
                cluster.restart(id);
            } else if rng.per_mille(faults.partition_per_mille) {
                cluster.partition(rng);
            } else if !running.is_empty() && rng.per_mille(faults.election_per_mille) {
                let id = pick(rng, &running);
                let timed_out = rng.percent(50);
                cluster.elect(id, timed_out);
            } else if !running.is_empty() && rng.per_mille(faults.snapshot_per_mille) {
                let id = pick(rng, &running);
                cluster.snapshot(id);
            } else {
                return false;
            }
            true
        })
    }

    /// The cluster moves on between steps: heartbeats, catching up, retries.
    pub(super) fn run_network(&mut self) {
        self.with_cluster(|cluster, rng| {
            for _ in 0..rng.below(TICKS_PER_STEP_MAX + 1) {
                cluster.tick(rng);
            }
            cluster.reap_failed(rng);
        });
    }

    /// kill -9 of the shop's leader with `in_flight` work maybe reaching its log: its newest
    /// record, never reported to a peer, may be lost whole or torn.
    pub(super) fn crash_leader(&mut self, torn: bool) {
        self.with_cluster(|cluster, rng| {
            cluster.settle();
            if let Some((id, _)) = cluster.shop {
                cluster.crash(id, torn, rng);
            }
        });
        self.resync();
    }

    /// The cluster's own checks after a step; the shop's model is checked against the
    /// leader only when it leads with nothing in flight.
    pub(super) fn check_cluster(&mut self, step: u64) -> bool {
        let cluster = self.cluster();
        let problems = cluster.check(step);
        let shop_settled = cluster.shop.is_some_and(|(id, _)| {
            cluster.node(id).is_some_and(|n| n.is_active()) && cluster.decided(id)
        });
        for problem in problems {
            self.violation(problem);
        }
        shop_settled
    }

    /// Faults off: every node restarted and caught up, then stopped; each data dir audited
    /// and all compared.
    /// Once converged: on every running node, a buyer's lookup shows every acknowledged
    /// order as that node's state has it (after snapshots installed and sled rebuilt).
    fn cluster_lookups(&self) -> Vec<String> {
        let cluster = self.cluster_ref();
        let mut wrong = Vec::new();
        for id in cluster.running() {
            if let Some(node) = cluster.node(id) {
                let problems = super::lookups_disagreeing(node.store(), self.acked.keys());
                wrong.extend(problems.into_iter().map(|p| format!("node {id}: {p}")));
            }
        }
        wrong
    }

    pub(super) fn finish_cluster(&mut self) {
        let converged = self.with_cluster(|cluster, rng| cluster.converge(rng));
        if !converged {
            self.violation("liveness: the nodes never caught up with the leader".into());
        }
        let step = self.step;
        let lookups = self.cluster_lookups();
        let cluster = self.cluster();
        let mut problems = cluster.check(step);
        problems.extend(lookups);
        let stats = cluster.stats.clone();
        let digest = cluster.digest();
        cluster.stop();
        let dirs = cluster.dirs();
        for problem in problems {
            self.violation(format!("at the end: {problem}"));
        }
        self.outcome.cluster = Some(stats);
        self.outcome.digest = digest;
        for dir in &dirs {
            match storage::audit::audit(dir) {
                Ok(report) => {
                    for violation in report.violations {
                        self.violation(format!("audit: {violation}"));
                    }
                }
                Err(error) => self.violation(format!("audit failed: {error}")),
            }
        }
        match storage::audit::compare(&dirs) {
            Ok(report) => {
                for violation in report.violations {
                    self.violation(format!("audit --compare: {violation}"));
                }
            }
            Err(error) => self.violation(format!("audit --compare failed: {error}")),
        }
    }
}
