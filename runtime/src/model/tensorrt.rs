//! What TensorRT is told about a model, derived from its manifest: the range of every
//! symbolic dimension over a generation of at most `max_batch` images, and the key that
//! names the model's graphs in the engine cache.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::backend::ShapeRange;
use crate::error::{Error, Result};
use crate::manifest::{DimSpec, GraphSpec, Manifest};
use flowar_format::SymbolicDim;

/// The (min, opt, max) of one symbolic dimension. Opt is the last scale at the full batch,
/// where most time goes.
fn dim_range(m: &Manifest, dim: SymbolicDim, max_batch: usize) -> (usize, usize, usize) {
    let final_tokens = m.final_grid() * m.final_grid();
    let total: usize = m.scales.iter().map(|s| s * s).sum();
    match dim {
        // Conditional and null rows of every image while CFG is on; fewer without it.
        SymbolicDim::Rows | SymbolicDim::VelocityRows => (1, 2 * max_batch, 2 * max_batch),
        SymbolicDim::Batch => (1, max_batch, max_batch),
        // One scale's tokens: the first scale has one, the last is the most expensive.
        SymbolicDim::Tokens => (1, final_tokens, final_tokens),
        // KV cache before a scale: empty before the first, everything but the last scale's
        // tokens before the last.
        SymbolicDim::PastTokens => (0, total - final_tokens, total - final_tokens),
        SymbolicDim::TotalTokens => (1, total, total),
    }
}

/// The shape range of every dynamic input of `graph` (onnxruntime wants every dynamic
/// input listed, and only those), for batches of at most `max_batch` images.
pub fn shape_ranges(m: &Manifest, graph: &GraphSpec, max_batch: usize) -> Result<Vec<ShapeRange>> {
    graph
        .inputs
        .iter()
        .filter(|i| i.is_dynamic())
        .map(|input| {
            let mut range = ShapeRange {
                input: input.name.clone(),
                min: Vec::new(),
                opt: Vec::new(),
                max: Vec::new(),
            };
            for d in &input.shape {
                let (lo, mid, hi) = match d {
                    DimSpec::Fixed(n) => (*n, *n, *n),
                    DimSpec::Symbolic(s) => {
                        let dim = SymbolicDim::from_name(s).ok_or_else(|| Error::Model {
                            path: PathBuf::from(&graph.file),
                            reason: format!(
                                "input `{}` has symbolic dimension `{s}`, which this runtime cannot size \
                                 a TensorRT profile for (a model from a newer exporter?)",
                                input.name
                            ),
                        })?;
                        dim_range(m, dim, max_batch)
                    }
                };
                range.min.push(lo);
                range.opt.push(mid);
                range.max.push(hi);
            }
            Ok(range)
        })
        .collect()
}

/// Names the model's weighted graphs and their precision in the engine cache
/// (`<graphs hash>-<f32|f16>`): a re-exported model gets new engines.
pub fn graphs_key(m: &Manifest) -> String {
    let mut h = Sha256::new();
    for g in [
        &m.graphs.ar_step,
        &m.graphs.flow_head,
        &m.graphs.vae_decoder,
    ] {
        h.update(g.sha256.as_bytes());
    }
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dtype = if m.dtype == "float16" { "f16" } else { "f32" };
    format!("{hash}-{dtype}")
}
