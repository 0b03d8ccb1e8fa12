//! What the terminator keeps per upstream service, process-wide (every
//! shard's route table points at the same one): the adaptive admission
//! limiter and the retry budget its bus clients share.

use crate::admission::Limiter;
use bus::RetryBudget;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One service's limiter and retry budget.
pub struct Upstream {
    pub limiter: Limiter,
    /// `None`: retries are off.
    pub retry_budget: Option<Arc<RetryBudget>>,
    /// The bus mechanism its clients use (NULL or CURVE).
    pub mechanism: bus::Mechanism,
}

/// How upstreams are made: from the settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub adaptive: bool,
    pub max_in_flight: usize,
    /// `None`: retries off; else (ratio, minimum per second, window).
    pub retries: Option<(f64, u32, std::time::Duration)>,
    /// `--bus-security` and the `--curve-*` keys, as a caller.
    pub mechanism: bus::Mechanism,
}

/// Every upstream of the process, by service name; created when a route
/// table first names the service, never on the request path.
pub struct Upstreams {
    policy: Policy,
    map: Mutex<BTreeMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    pub fn new(policy: Policy) -> Arc<Upstreams> {
        let u = Arc::new(Upstreams {
            policy,
            map: Mutex::new(BTreeMap::new()),
        });
        telemetry::register(&u);
        u
    }

    pub fn get(&self, service: &str) -> Arc<Upstream> {
        self.map
            .lock()
            .entry(service.to_string())
            .or_insert_with(|| {
                Arc::new(Upstream {
                    limiter: Limiter::new(self.policy.adaptive, self.policy.max_in_flight),
                    retry_budget: self
                        .policy
                        .retries
                        .map(|(r, m, w)| Arc::new(RetryBudget::new(r, m, w))),
                    mechanism: self.policy.mechanism.clone(),
                })
            })
            .clone()
    }
}

/// Reports `admission.<service>.limit`, `.in_flight` and `.shed`.
impl telemetry::Source for Upstreams {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        for (service, u) in self.map.lock().iter() {
            let p = format!("admission.{}", telemetry::sanitize(service));
            v.gauge(&format!("{p}.limit"), u.limiter.limit() as i64);
            v.gauge(&format!("{p}.in_flight"), u.limiter.in_flight() as i64);
            v.counter(&format!("{p}.shed"), u.limiter.shed.get());
        }
    }
}
