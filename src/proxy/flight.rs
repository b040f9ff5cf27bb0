//! Single flight for small upstream requests (manifests by tag and by digest): concurrent
//! callers with the same key share one execution and its result.
//!
//! Built on `tokio::sync::OnceCell`: if the caller running the work is cancelled (its client
//! went away), the next waiter runs its own work, so nobody waits on a request nobody makes.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// A table of flights in progress.
pub struct Flights<K, V> {
    map: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Runs `work` unless a flight for `key` is under way, in which case waits for its result.
    /// The second value tells whether this caller joined another's flight.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .map
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let mut ran = false;
        let v = cell
            .get_or_init(|| {
                ran = true;
                work()
            })
            .await
            .clone();
        let mut map = self.map.lock().unwrap();
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        (v, !ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_execution() {
        let flights: Arc<Flights<u32, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (f, r) = (flights.clone(), runs.clone());
                tokio::spawn(async move {
                    f.run(1, || async {
                        r.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
                })
            })
            .collect();
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, 7);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 9);
        // Finished flights are forgotten: the next call runs again.
        let (_, j) = flights.run(1, || async { 8 }).await;
        assert!(!j);
    }
}
