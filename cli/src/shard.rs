//! `--shard I/N` and `--shard auto`: which images of a run this process makes. Image `k`
//! belongs to shard `k mod N`, so shards split a run without coordinating, and any split
//! gives the same images (image `k` always draws RNG stream `k`).
//!
//! `auto` reads the index and count from the scheduler that started the process, so a
//! SLURM job array or a Kubernetes Indexed Job runs the same command line in every task:
//! - SLURM: `SLURM_ARRAY_TASK_ID` (minus `SLURM_ARRAY_TASK_MIN` when the array does not
//!   start at 0) of `SLURM_ARRAY_TASK_COUNT`;
//! - Kubernetes: `JOB_COMPLETION_INDEX` of `FLOWAR_SHARD_COUNT` (set it to the Job's
//!   `completions`; Kubernetes does not pass the count to the pod).

use crate::commands::{CliError, CliResult};

/// One shard of a run: this process makes the images whose index is `index` mod `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Whether image `k` is this shard's.
    pub fn has(&self, k: u64) -> bool {
        k % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Parses `--shard`: `I/N` with `I < N`, or `auto` (read through `env`).
pub fn parse(s: &str, env: impl Fn(&str) -> Option<String>) -> CliResult<Shard> {
    if s == "auto" {
        return from_scheduler(env);
    }
    let bad = || {
        CliError::Usage(format!(
            "--shard `{s}` must look like I/N with 0 <= I < N, e.g. 0/4, or be `auto`"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, count): (u64, u64) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// A non-negative integer environment variable, or why it is unusable.
fn number(env: &impl Fn(&str) -> Option<String>, name: &str) -> CliResult<Option<u64>> {
    match env(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            CliError::Usage(format!(
                "--shard auto: {name}=`{v}` is not a non-negative integer"
            ))
        }),
    }
}

fn from_scheduler(env: impl Fn(&str) -> Option<String>) -> CliResult<Shard> {
    let need = |what: &str, name: &str, value: Option<u64>| {
        value.ok_or_else(|| {
            CliError::Usage(format!(
                "--shard auto: {what} is set but {name} is not; both are needed"
            ))
        })
    };
    let slurm = match number(&env, "SLURM_ARRAY_TASK_ID")? {
        Some(id) => {
            let count = need(
                "SLURM_ARRAY_TASK_ID",
                "SLURM_ARRAY_TASK_COUNT",
                number(&env, "SLURM_ARRAY_TASK_COUNT")?,
            )?;
            let min = number(&env, "SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).ok_or_else(|| {
                CliError::Usage(format!(
                    "--shard auto: SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
                ))
            })?;
            Some(("SLURM", index, count))
        }
        None => None,
    };
    let k8s = match number(&env, "JOB_COMPLETION_INDEX")? {
        Some(index) => {
            let count = need(
                "JOB_COMPLETION_INDEX",
                "FLOWAR_SHARD_COUNT",
                number(&env, "FLOWAR_SHARD_COUNT")?,
            )?;
            Some(("Kubernetes", index, count))
        }
        None => None,
    };
    let (source, index, count) = match (slurm, k8s) {
        (Some(a), Some(b)) if (a.1, a.2) != (b.1, b.2) => {
            return Err(CliError::Usage(format!(
                "--shard auto: the SLURM variables say shard {}/{} but the Kubernetes ones say {}/{}; unset one set",
                a.1, a.2, b.1, b.2
            )))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(CliError::Usage(
                "--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a SLURM job array) \
                 or JOB_COMPLETION_INDEX and FLOWAR_SHARD_COUNT (a Kubernetes Indexed Job); none is set"
                    .into(),
            ))
        }
    };
    if count == 0 || index >= count {
        return Err(CliError::Usage(format!(
            "--shard auto: {source} gives shard {index} of {count}, which does not exist (0 <= index < count)"
        )));
    }
    Ok(Shard { index, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn shard(index: u64, count: u64) -> Shard {
        Shard { index, count }
    }

    #[test]
    fn explicit_shards_parse() {
        assert_eq!(parse("1/4", env(&[])).unwrap(), shard(1, 4));
        assert_eq!(parse(" 0 / 1 ", env(&[])).unwrap(), shard(0, 1));
        for bad in ["4/4", "1/0", "1", "a/b", "-1/2", ""] {
            let e = parse(bad, env(&[])).unwrap_err().to_string();
            assert!(e.contains("--shard") && e.contains("auto"), "{bad}: {e}");
        }
    }

    #[test]
    fn auto_reads_slurm_arrays() {
        let vars = [
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert_eq!(parse("auto", env(&vars)).unwrap(), shard(3, 8));
        // --array=1-8 numbers tasks from 1.
        let vars = [
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert_eq!(parse("auto", env(&vars)).unwrap(), shard(7, 8));
    }

    #[test]
    fn auto_reads_kubernetes_indexed_jobs() {
        let vars = [("JOB_COMPLETION_INDEX", "0"), ("FLOWAR_SHARD_COUNT", "50")];
        assert_eq!(parse("auto", env(&vars)).unwrap(), shard(0, 50));
        // Both schedulers' variables may be set if they agree.
        let vars = [
            ("JOB_COMPLETION_INDEX", "2"),
            ("FLOWAR_SHARD_COUNT", "4"),
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(parse("auto", env(&vars)).unwrap(), shard(2, 4));
    }

    #[test]
    fn auto_names_what_is_missing_or_contradictory() {
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[], "none is set"),
            (
                &[("SLURM_ARRAY_TASK_ID", "1")],
                "SLURM_ARRAY_TASK_COUNT is not",
            ),
            (
                &[("JOB_COMPLETION_INDEX", "1")],
                "FLOWAR_SHARD_COUNT is not",
            ),
            (
                &[("JOB_COMPLETION_INDEX", "x"), ("FLOWAR_SHARD_COUNT", "2")],
                "JOB_COMPLETION_INDEX=`x`",
            ),
            (
                &[("JOB_COMPLETION_INDEX", "2"), ("FLOWAR_SHARD_COUNT", "2")],
                "shard 2 of 2, which does not exist",
            ),
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "0"),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_COUNT", "2"),
                ],
                "below SLURM_ARRAY_TASK_MIN",
            ),
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "1"),
                    ("SLURM_ARRAY_TASK_COUNT", "2"),
                    ("JOB_COMPLETION_INDEX", "0"),
                    ("FLOWAR_SHARD_COUNT", "2"),
                ],
                "SLURM variables say shard 1/2 but the Kubernetes ones say 0/2",
            ),
        ];
        for (vars, needle) in cases {
            let e = parse("auto", env(vars)).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }
}
