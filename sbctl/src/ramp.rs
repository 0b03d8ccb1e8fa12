//! `sbctl ramp`: move a service's traffic to a new version step by step,
//! judging the new version between steps and rolling back on its own.
//!
//! ```text
//!  weights before: {v1: 100}        (or every other registered version alike)
//!  every --every:  judge the new version over the last period
//!     error rate > --max-error-rate, or p99 > --max-p99  ─► roll back:
//!                  the weights before, the new version at 0; exit 1
//!     fewer than --min-requests                           ─► hold (judge again)
//!     else         new += --step, the others share the rest as before
//!  new at 100 ─► done
//! ```
//!
//! The others keep their proportions: `{v1: 60, v1b: 40}` ramping v2 by 10
//! becomes `{v1: 54, v1b: 36, v2: 10}`.

use crate::fleet::{self, Window};
use crate::store::Store;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Plan {
    pub service: String,
    pub version: String,
    pub step: u32,
    pub every: Duration,
    /// 0 to 1.
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub min_requests: u64,
    /// Holds in a row (too little traffic to judge) before giving up.
    pub max_holds: u32,
}

/// The weights with `version` at `pct` (of 100) and the others scaled
/// from `before` to share the rest.
pub fn weights_at(before: &[(String, u32)], version: &str, pct: u32) -> Vec<(String, u32)> {
    let others: Vec<&(String, u32)> = before.iter().filter(|(v, _)| v != version).collect();
    let total: u64 = others.iter().map(|(_, w)| *w as u64).sum();
    let rest = 100 - pct.min(100);
    let mut out: Vec<(String, u32)> = others
        .iter()
        .map(|(v, w)| {
            let share = (*w as u64 * rest as u64).checked_div(total).unwrap_or(0) as u32;
            (v.clone(), share)
        })
        .collect();
    // Rounding down leaves a remainder: the largest other takes it.
    let given: u32 = out.iter().map(|(_, w)| *w).sum();
    if let Some(big) = out.iter_mut().max_by_key(|(_, w)| *w) {
        big.1 += rest - given.min(rest);
    }
    out.push((version.to_string(), pct.min(100)));
    out
}

/// Why a window fails the plan, if it does.
pub fn verdict(plan: &Plan, w: &Window) -> Option<String> {
    if w.error_rate() > plan.max_error_rate {
        return Some(format!(
            "{}'s error rate {:.2}% ({} of {} requests) over the last {:?} exceeds {:.2}%",
            plan.version,
            w.error_rate() * 100.0,
            w.errors,
            w.requests,
            plan.every,
            plan.max_error_rate * 100.0
        ));
    }
    match (plan.max_p99_ms, w.p99_ms) {
        (Some(max), Some(p99)) if p99 > max => Some(format!(
            "{}'s p99 {p99:.1} ms over the last {:?} exceeds {max} ms",
            plan.version, plan.every
        )),
        _ => None,
    }
}

/// Runs the ramp; Ok when the version reached 100, Err with what
/// happened (rolled back, or gave up) otherwise.
pub async fn run(store: &mut Store, admins: &[String], plan: &Plan) -> Result<(), String> {
    let mut doc = store.policy(&plan.service).await?;
    let mut before = Store::weights(&doc);
    if before.iter().all(|(_, w)| *w == 0) {
        // No weights yet: every other registered version alike.
        let mut versions: Vec<String> = store
            .registrations()
            .await?
            .into_iter()
            .filter(|r| r.service == plan.service && r.version != plan.version)
            .map(|r| r.version)
            .collect();
        versions.sort();
        versions.dedup();
        if versions.is_empty() {
            return Err(format!(
                "no other version of {} is registered: nothing to ramp from",
                plan.service
            ));
        }
        before = versions.into_iter().map(|v| (v, 1)).collect();
    }
    let start = before
        .iter()
        .find(|(v, _)| *v == plan.version)
        .map_or(0, |(_, w)| {
            let total: u32 = before.iter().map(|(_, w)| *w).sum();
            (*w as u64 * 100 / total.max(1) as u64) as u32
        });
    let mut pct = start;
    let rollback = |doc: &mut serde_json::Map<String, serde_json::Value>| {
        let mut w: Vec<(String, u32)> = before
            .iter()
            .filter(|(v, _)| *v != plan.version)
            .cloned()
            .collect();
        w.push((plan.version.clone(), 0));
        Store::set_weights(doc, &w);
    };
    let mut last = fleet::sample(admins, &plan.service, &plan.version).await?;
    loop {
        if pct >= 100 {
            println!("{}: {} at 100%: ramp done", plan.service, plan.version);
            return Ok(());
        }
        let next = (pct + plan.step).min(100);
        Store::set_weights(&mut doc, &weights_at(&before, &plan.version, next));
        store.put_policy(&plan.service, &doc).await?;
        println!("{}: {} at {next}%", plan.service, plan.version);
        pct = next;
        // Each step is judged over the periods it ran for, the last too.
        let mut holds = 0;
        loop {
            tokio::time::sleep(plan.every).await;
            let now = fleet::sample(admins, &plan.service, &plan.version).await?;
            let w = Window::between(&last, &now);
            last = now;
            if let Some(why) = verdict(plan, &w) {
                rollback(&mut doc);
                store.put_policy(&plan.service, &doc).await?;
                return Err(format!(
                    "rolled back {} of {} to 0%: {why}",
                    plan.version, plan.service
                ));
            }
            if w.requests >= plan.min_requests {
                break;
            }
            holds += 1;
            println!(
                "{}: only {} requests reached {} in the last {:?} (need {}); holding at {pct}%",
                plan.service, w.requests, plan.version, plan.every, plan.min_requests
            );
            if holds >= plan.max_holds {
                return Err(format!(
                    "gave up at {pct}%: too little traffic to judge {} after {holds} periods; the weights stay as they are",
                    plan.version
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_others_keep_their_proportions() {
        let before = vec![("v1".to_string(), 60), ("v1b".to_string(), 40)];
        assert_eq!(
            weights_at(&before, "v2", 10),
            vec![("v1".into(), 54), ("v1b".into(), 36), ("v2".into(), 10)]
        );
        let w = weights_at(&[("v1".into(), 1)], "v2", 100);
        assert_eq!(w, vec![("v1".into(), 0), ("v2".into(), 100)]);
        let w = weights_at(&[("v1".into(), 1), ("v2".into(), 1)], "v2", 33);
        assert_eq!(w, vec![("v1".into(), 67), ("v2".into(), 33)]);
        let w = weights_at(
            &[("a".into(), 1), ("b".into(), 1), ("c".into(), 1)],
            "v2",
            10,
        );
        assert_eq!(w.iter().map(|(_, w)| w).sum::<u32>(), 100, "{w:?}");
    }

    #[test]
    fn verdicts() {
        let plan = Plan {
            service: "s".into(),
            version: "v2".into(),
            step: 10,
            every: Duration::from_secs(1),
            max_error_rate: 0.01,
            max_p99_ms: Some(25.0),
            min_requests: 10,
            max_holds: 3,
        };
        let ok = Window {
            requests: 100,
            errors: 1,
            p99_ms: Some(3.0),
        };
        assert_eq!(verdict(&plan, &ok), None);
        let bad = Window {
            errors: 2,
            ..ok.clone()
        };
        assert!(verdict(&plan, &bad).unwrap().contains("error rate 2.00%"));
        let slow = Window {
            p99_ms: Some(30.0),
            ..ok
        };
        assert!(verdict(&plan, &slow).unwrap().contains("p99 30.0 ms"));
    }
}
