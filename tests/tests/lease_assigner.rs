//! Assigner mode's own guarantees (docs/LEASES.md, "Assigner mode"), with `kinesis-worker
//! leases` processes against the local servers: the assigner names three successors (not
//! itself), the role moves when the assigner dies and its shards follow, and a new assigner
//! gives no lease to a worker that died before it started watching (it gives leases only to
//! workers it has seen alive).

use std::collections::BTreeSet;
use std::time::Duration;

use kinesis_operator_tests::fleet::{DEADLINE, Fleet, POLL, shared_by};
use kinesis_operator_tests::wait_for;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const ASSIGNER: &[&str] = &["--coordination", "assigner"];

#[tokio::test]
async fn a_new_assigner_gives_nothing_to_a_worker_that_died_before_it_watched() -> Result<()> {
    let fleet = Fleet::new(8).await?;
    let ids = ["w1", "w2", "w3"];
    let mut procs = Vec::new();
    for id in ids {
        procs.push((id, fleet.worker(id, ASSIGNER)?));
    }
    fleet
        .until("8 shards shared 3/3/2", shared_by(8, &ids, 2, 3))
        .await?;
    // The assigner has named its successors: both others.
    let role = wait_for("the successors named", DEADLINE, POLL, || async {
        let role = fleet.table.read_assigner(true).await.ok()??;
        (role.successors.len() == 2).then_some(role)
    })
    .await?;
    let assigner = role.owner.clone().ok_or("the role has an owner")?;
    let others: Vec<&str> = ids.iter().copied().filter(|w| *w != assigner).collect();
    let (dead, survivor) = (others[0], others[1]);
    eprintln!("assigner {assigner}, killing {dead} and then the assigner; {survivor} survives");

    // A worker dies, and the assigner dies before it noticed (well within a failover time).
    for (id, p) in &procs {
        if *id == dead {
            p.signal("KILL");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (id, p) in &procs {
        if *id == assigner {
            p.signal("KILL");
        }
    }

    // The survivor claims the role; from then on it must never give a lease to `dead`: the
    // table is sampled until the survivor holds everything.
    let mut given_to_dead = BTreeSet::new();
    let mut claimed = false;
    let mut inherited: Option<BTreeSet<(String, u64)>> = None;
    let inherited_now = |snap: &kinesis_worker::lease::model::TableSnapshot| {
        snap.leases
            .iter()
            .filter(|l| l.assigned && l.owner.as_deref() == Some(dead))
            .map(|l| (l.shard_id.clone(), l.counter))
            .collect::<BTreeSet<_>>()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let done = loop {
        if tokio::time::Instant::now() > deadline {
            break Err(format!(
                "the survivor did not get all 8 shards within {DEADLINE:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
        if !claimed {
            let Ok(Some(role)) = fleet.table.read_assigner(true).await else {
                continue;
            };
            claimed = role.owner.as_deref() == Some(survivor);
            if claimed {
                eprintln!("{survivor} became the assigner (term {})", role.term);
            }
        }
        let Some(snap) = fleet.snapshot().await else {
            continue;
        };
        if claimed {
            // Given to the dead worker (and not accepted, so still marked): at a counter not
            // already there when the survivor took over (the old assigner's own gifts stay
            // in the table until they are freed).
            for l in &snap.leases {
                if l.assigned && l.owner.as_deref() == Some(dead) {
                    let gift = (l.shard_id.clone(), l.counter);
                    if !inherited
                        .get_or_insert_with(|| inherited_now(&snap))
                        .contains(&gift)
                    {
                        given_to_dead.insert(gift);
                    }
                }
            }
            inherited.get_or_insert_with(|| inherited_now(&snap));
        }
        let all_mine = snap
            .leases
            .iter()
            .all(|l| l.owner.as_deref() == Some(survivor) && !l.assigned);
        if claimed && all_mine {
            break Ok(());
        }
    };
    assert!(
        given_to_dead.is_empty(),
        "the new assigner gave leases to {dead}, dead before it started watching: {given_to_dead:?}"
    );
    done?;
    fleet.cleanup().await
}

#[tokio::test]
async fn a_successor_takes_the_role_when_the_assigner_is_killed() -> Result<()> {
    let fleet = Fleet::new(6).await?;
    let ids = ["w1", "w2", "w3", "w4", "w5"];
    let mut procs = Vec::new();
    for id in ids {
        procs.push((id, fleet.worker(id, ASSIGNER)?));
    }
    fleet
        .until("6 shards on 5 workers", shared_by(6, &ids, 1, 2))
        .await?;
    let role = wait_for("three successors named", DEADLINE, POLL, || async {
        let role = fleet.table.read_assigner(true).await.ok()??;
        (role.successors.len() == 3).then_some(role)
    })
    .await?;
    let assigner = role.owner.clone().ok_or("the role has an owner")?;
    assert!(
        !role.successors.contains(&assigner),
        "the assigner is not its own successor: {role:?}"
    );
    for (id, p) in &procs {
        if *id == assigner {
            p.signal("KILL");
        }
    }
    let (_, after) = wait_for("a new assigner", DEADLINE, POLL, || async {
        let now = fleet.table.read_assigner(true).await.ok()??;
        (now.owner.is_some() && now.owner != role.owner).then_some(((), now))
    })
    .await?;
    // A successor normally wins (it watches every round); any other follower may win too
    // (its 30-round look is the fallback), e.g. on a loaded machine: not asserted.
    let new = after.owner.clone().unwrap_or_default();
    eprintln!(
        "the role went to {new} (successors {:?}, term {})",
        role.successors, after.term
    );
    assert!(
        after.term > role.term,
        "a claim bumps the term: {role:?} → {after:?}"
    );
    let rest: Vec<&str> = ids.iter().copied().filter(|w| *w != assigner).collect();
    fleet
        .until(
            "the dead assigner's shards moved",
            shared_by(6, &rest, 1, 2),
        )
        .await?;
    fleet.cleanup().await
}

/// A fleet that mixes coordination modes is reported (docs/LEASES.md, "Assigner mode"): a
/// peer-mode worker started beside assigner-mode ones logs an error naming them, and the
/// assigner logs one naming it; every shard still has one owner at a time (fenced takes).
#[tokio::test]
async fn a_fleet_that_mixes_coordination_modes_says_so() -> Result<()> {
    let fleet = Fleet::new(4).await?;
    let a1 = fleet.worker("a1", ASSIGNER)?;
    let a2 = fleet.worker("a2", ASSIGNER)?;
    fleet
        .until("4 shards shared 2/2", shared_by(4, &["a1", "a2"], 2, 2))
        .await?;
    let p = fleet.worker("p1", &["--coordination", "peer"])?;
    let said = |proc: &kinesis_operator_tests::process::Proc, other: &str| {
        proc.log_text().lines().any(|l| {
            l.contains("mixes coordination modes") && l.contains(&format!("worker=\"{other}\""))
        })
    };
    wait_for("both modes report the other", DEADLINE, POLL, || async {
        let peer_saw = said(&p, "a1") || said(&p, "a2");
        let assigner_saw = said(&a1, "p1") || said(&a2, "p1");
        (peer_saw && assigner_saw).then_some(())
    })
    .await
    .map_err(|e| {
        format!(
            "{e}\n--- p1\n{}\n--- a1\n{}\n--- a2\n{}",
            p.log_tail(),
            a1.log_tail(),
            a2.log_tail()
        )
    })?;
    drop(p);
    drop((a1, a2));
    fleet.cleanup().await
}

/// A follower whose read of the assigner's heartbeat is answered after more than the failover
/// time must not take the live assigner for dead (two chaos runs saw it: every lease of the
/// live assigner taken while it still delivered). A value is as old as when it was seen, and
/// staleness never counts the time the read itself took.
#[tokio::test]
async fn a_slow_read_of_the_assigners_heartbeat_does_not_make_it_dead() -> Result<()> {
    use kinesis_operator_tests::faults::{Action, FaultProxy, Rule};
    let fleet = Fleet::new(4).await?;
    let w1 = fleet.worker("w1", ASSIGNER)?;
    fleet
        .until("w1 holds all 4", shared_by(4, &["w1"], 4, 4))
        .await?;
    let role = fleet
        .table
        .read_assigner(true)
        .await?
        .ok_or("an assigner")?;
    assert_eq!(role.owner.as_deref(), Some("w1"));
    let upstream = fleet
        .env
        .dynamodb_endpoint
        .trim_start_matches("http://")
        .to_string();
    let proxy = FaultProxy::start(&upstream).await?;
    let mut args = ASSIGNER.to_vec();
    args.extend(["--dynamodb-endpoint", &proxy.endpoint]);
    let w2 = fleet.worker("w2", &args)?;
    fleet
        .until("2 each", shared_by(4, &["w1", "w2"], 2, 2))
        .await?;
    let counters = |snap: &kinesis_worker::lease::model::TableSnapshot| {
        let mut c: Vec<(String, u64)> = snap
            .leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some("w1"))
            .map(|l| (l.shard_id.clone(), l.counter))
            .collect();
        c.sort();
        c
    };
    let before = counters(&fleet.snapshot().await.ok_or("a snapshot")?);
    // Three times: one read of w1's heartbeat by w2 is answered 4.5 s late (failover 3 s);
    // the next, a quarter second later, most likely sees the same counter.
    for _ in 0..3 {
        let (seen, done) = (proxy.injected(), proxy.delays_done());
        let id = proxy.add(Rule::new(
            &["dynamodb_20120810.getitem", "kinesis-operator:worker:w1"],
            Action::Delay(Duration::from_millis(4_500)),
        ));
        wait_for(
            "a read of w1's heartbeat delayed",
            DEADLINE,
            POLL,
            || async { (proxy.injected() > seen).then_some(()) },
        )
        .await?;
        proxy.remove(id);
        // The delayed read lands; then w2 goes on for several rounds (60 more requests of its
        // own, each round with a read of w1's heartbeat) before the next one.
        wait_for("the delayed read answered", DEADLINE, POLL, || async {
            (proxy.delays_done() > done).then_some(())
        })
        .await?;
        let after_landing = proxy.forwarded();
        wait_for("w2's next rounds", DEADLINE, POLL, || async {
            (proxy.forwarded() >= after_landing + 60).then_some(())
        })
        .await?;
    }
    let role = fleet
        .table
        .read_assigner(true)
        .await?
        .ok_or("an assigner")?;
    let after = counters(&fleet.snapshot().await.ok_or("a snapshot")?);
    let log = std::fs::read_to_string(&w2.log).unwrap_or_default();
    assert!(
        !log.contains("claiming the role"),
        "w2 took the live assigner for dead\n{}",
        w2.log_tail()
    );
    assert_eq!(
        role.owner.as_deref(),
        Some("w1"),
        "w1 is still the assigner"
    );
    assert_eq!(before, after, "no lease of w1's was taken");
    drop((w1, w2));
    fleet.cleanup().await
}
