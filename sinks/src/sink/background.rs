//! Background delivery tasks of a sink (Parquet uploads, webhook requests): reaping their outcomes,
//! and noticing a failure as soon as it happens ([`crate::Sink::stopped`]).

use tokio::task::{JoinError, JoinSet};

use crate::{Error, Result};

/// The outcome of one finished task: its own result; a panic is propagated; a cancelled task
/// (the sink is being dropped) is no error.
pub(crate) fn finished(done: std::result::Result<Result<()>, JoinError>) -> Result<()> {
    match done {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()),
    }
}

/// Completes with the first error among `tasks`, reaping those that succeed; while none fails
/// (or none runs) it never completes. Cancel-safe, as [`JoinSet::join_next`] is.
pub(crate) async fn first_failure(tasks: &mut JoinSet<Result<()>>) -> Error {
    loop {
        match tasks.join_next().await {
            None => return std::future::pending().await,
            Some(done) => {
                if let Err(error) = finished(done) {
                    return error;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_surfaces_and_successes_are_reaped() {
        let mut tasks = JoinSet::new();
        tasks.spawn(async { Ok(()) });
        tasks.spawn(async {
            Err(Error::AcksClosed {
                sink: "s".to_owned(),
            })
        });
        let error =
            tokio::time::timeout(std::time::Duration::from_secs(5), first_failure(&mut tasks))
                .await
                .expect("the failure surfaces");
        assert!(matches!(error, Error::AcksClosed { .. }));
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                first_failure(&mut tasks)
            )
            .await
            .is_err(),
            "nothing left to fail"
        );
    }
}
