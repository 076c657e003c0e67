//! The solver step: classifier-free guidance and one explicit ODE update, run where the
//! other graphs run, so the sampler state never leaves the device between steps.
//!
//! Inputs: `x [batch, tokens, C]` (float64 state, as the reference keeps it), `v [velocity_rows,
//! tokens, C]` (the flow head's float32 output: `batch` rows, or conditional then null rows),
//! `w []` (float32 guidance weight) and `dt []` (float64 step). Outputs:
//! - `x_next = x + dt * g` in float64, where `g = v_u + w (v_c - v_u)` in float32 (with one
//!   row block, `v_c = v_u = v` and `g = v` exactly);
//! - `x_in`, `x_next` as float32 (the flow head's next `x` when unguided), and `x_in_pair`,
//!   `[x_in; x_in]` (its next `x` when guided);
//! - `nonfinite []`: how many elements of `v` are NaN or infinite (the sampler's only per-step
//!   read back).
//!
//! Heun's method is two Euler-form updates of this graph (see the runtime's sampler).

use super::{BuiltGraph, Io, BATCH, TOKENS, VELOCITY_ROWS};
use crate::onnx::builder::{attr_int, Graph};
use crate::onnx::{Dim, Elem};
use flowar_format::io::solver_step as io;

pub fn build(latent_channels: usize, version: &str) -> BuiltGraph {
    let c = latent_channels;
    let state = || vec![Dim::Sym(BATCH), Dim::Sym(TOKENS), Dim::Fixed(c)];
    let inputs = vec![
        Io::new(io::X, Elem::F64, state()),
        Io::new(
            io::V,
            Elem::F32,
            vec![Dim::Sym(VELOCITY_ROWS), Dim::Sym(TOKENS), Dim::Fixed(c)],
        ),
        Io::new(io::W, Elem::F32, vec![]),
        Io::new(io::DT, Elem::F64, vec![]),
    ];
    let outputs = vec![
        Io::new(io::X_NEXT, Elem::F64, state()),
        Io::new(io::X_IN, Elem::F32, state()),
        Io::new(
            io::X_IN_PAIR,
            Elem::F32,
            vec![Dim::Sym(super::ROWS), Dim::Sym(TOKENS), Dim::Fixed(c)],
        ),
        Io::new(io::NONFINITE, Elem::F32, vec![]),
    ];
    let mut g = Graph::new("flowar_solver_step");
    for io in &inputs {
        g.input(&io.name, io.elem, &io.dims);
    }
    let g_f32 = g.scoped("guidance", |g| {
        // Conditional rows are the first `batch`, null rows the last `batch` (the same rows
        // when there is one block). Slicing by `batch` keeps every dimension symbolic.
        let (zero, one) = (g.const_i64(&[0]), g.const_i64(&[1]));
        let shape_x = g.node("Shape", &[io::X], vec![]);
        let batch = g.node("Slice", &[&shape_x, &zero, &one], vec![]);
        let shape_v = g.node("Shape", &[io::V], vec![]);
        let rows = g.node("Slice", &[&shape_v, &zero, &one], vec![]);
        let null_start = g.sub(&rows, &batch);
        let vc = g.node("Slice", &[io::V, &zero, &batch, &zero], vec![]);
        let vu = g.node("Slice", &[io::V, &null_start, &rows, &zero], vec![]);
        let diff = g.sub(&vc, &vu);
        let scaled = g.mul(io::W, &diff);
        g.add(&vu, &scaled)
    });
    let x_next = g.scoped("update", |g| {
        let g64 = g.node(
            "Cast",
            &[&g_f32],
            vec![attr_int("to", Elem::F64.onnx() as i64)],
        );
        let step = g.mul(io::DT, &g64);
        g.add(io::X, &step)
    });
    let (x_in, pair) = g.scoped("next_input", |g| {
        let x_in = g.node(
            "Cast",
            &[&x_next],
            vec![attr_int("to", Elem::F32.onnx() as i64)],
        );
        let pair = g.concat(&[&x_in, &x_in], 0);
        (x_in, pair)
    });
    let nonfinite = g.scoped("nonfinite", |g| {
        let nan = g.unary("IsNaN", io::V);
        let inf = g.unary("IsInf", io::V);
        let bad = g.node("Or", &[&nan, &inf], vec![]);
        let count = g.node(
            "Cast",
            &[&bad],
            vec![attr_int("to", Elem::F32.onnx() as i64)],
        );
        g.node("ReduceSum", &[&count], vec![attr_int("keepdims", 0)])
    });
    g.output(&x_next, io::X_NEXT, Elem::F64, &outputs[0].dims);
    g.output(&x_in, io::X_IN, Elem::F32, &outputs[1].dims);
    g.output(&pair, io::X_IN_PAIR, Elem::F32, &outputs[2].dims);
    g.output(&nonfinite, io::NONFINITE, Elem::F32, &outputs[3].dims);
    BuiltGraph {
        model: g.finish(
            "FlowAR solver step: CFG combination and x + dt * v in float64",
            version,
        ),
        inputs,
        outputs,
        parameters: 0,
        int8_linears: Vec::new(),
        inference_precision: None,
    }
}
