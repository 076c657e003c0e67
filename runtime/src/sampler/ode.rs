//! One scale's ODE from noise to tokens, with classifier-free guidance, kept on the device:
//! the state, the flow head's input and the velocity move between the flow head and the
//! solver-step graph as [`Resident`] values. Per step the host sends the time and step size
//! and reads back one non-finite count (`docs/flowar-reference.md`, section 6).

use std::time::Instant;

use crate::backend::Resident;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tensor::Tensor;

use super::schedule::guided;
use super::{Solver, StageTimes};

/// The sampler state: float64 `x [batch, N, C]` and the flow head's float32 inputs made
/// from it (conditional rows, and conditional rows twice for a guided call).
pub struct State {
    pub x: Resident,
    x_in: Resident,
    x_in_pair: Option<Resident>,
}

/// Guidance settings and the condition for one scale.
pub struct ScaleOde<'a> {
    pub scale: usize,
    /// Images in the batch (conditional rows).
    pub batch: usize,
    /// Whether null-class rows follow the conditional ones in `z`.
    pub cfg_on: bool,
    /// This scale's guidance weight.
    pub w: f64,
    /// Guidance interval setting (see [`guided`]).
    pub guidance: f64,
    /// The AR condition `[rows, N, D]`.
    pub z: &'a Resident,
    /// `z`'s conditional rows, made on first use (only unguided steps with CFG on need it).
    z_cond: Option<Resident>,
}

impl<'a> ScaleOde<'a> {
    pub fn new(
        scale: usize,
        batch: usize,
        cfg_on: bool,
        w: f64,
        guidance: f64,
        z: &'a Resident,
    ) -> Self {
        ScaleOde {
            scale,
            batch,
            cfg_on,
            w,
            guidance,
            z,
            z_cond: None,
        }
    }

    /// The starting state from the conditional rows of `noise [rows, N, C]`.
    pub fn initial_state(&self, model: &Model, noise: &[f32], n: usize, c: usize) -> Result<State> {
        let cond = &noise[..self.batch * n * c];
        self.state_from_host(model, cond.iter().map(|&v| v as f64).collect(), n, c)
    }

    /// A state from float64 values `[batch, N, C]` made on the host (the start, or an
    /// edit's forced tokens), with the flow head's float32 inputs made from them.
    pub fn state_from_host(&self, model: &Model, x: Vec<f64>, n: usize, c: usize) -> Result<State> {
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let x_in_pair = if self.cfg_on {
            let mut pair = x32.clone();
            pair.extend_from_slice(&x32);
            Some(model.upload(&Tensor::f32(vec![2 * self.batch, n, c], pair))?)
        } else {
            None
        };
        let x_in = model.upload(&Tensor::f32(vec![self.batch, n, c], x32))?;
        let x = model.upload(&Tensor::f64(vec![self.batch, n, c], x))?;
        Ok(State { x, x_in, x_in_pair })
    }

    /// Velocity at (`state`, `t`): guided calls run conditional and null rows together;
    /// unguided ones only the conditional rows (the null rows are never read again).
    fn velocity(
        &mut self,
        model: &mut Model,
        state: &State,
        t: f64,
        st: &mut StageTimes,
    ) -> Result<Resident> {
        let start = Instant::now();
        let scale = self.scale;
        let (x, z) = match &state.x_in_pair {
            Some(pair) if guided(self.w, t, self.guidance) => (pair, self.z),
            Some(_) => (&state.x_in, self.conditional_z(model)?),
            None => (&state.x_in, self.z),
        };
        let rows = x.shape()[0];
        let tin = Resident::Host(Tensor::f32(vec![rows], vec![t as f32; rows]));
        let v = model.flow(scale, x, &tin, z)?;
        st.flow += start.elapsed();
        st.flow_calls += 1;
        st.flow_rows += rows;
        Ok(v)
    }

    /// The first `batch` rows of `z`: one host round trip per scale, only when needed.
    fn conditional_z(&mut self, model: &Model) -> Result<&Resident> {
        if self.z_cond.is_none() {
            let z = self.z.to_host()?;
            let shape = vec![self.batch, z.shape[1], z.shape[2]];
            let keep = shape.iter().product();
            let data = z.into_f32().ok_or_else(|| Error::Model {
                path: model.dir.clone(),
                reason: "the AR step's `z` is not float32".into(),
            })?;
            self.z_cond = Some(model.upload(&Tensor::f32(shape, data[..keep].to_vec()))?);
        }
        Ok(self.z_cond.as_ref().expect("just set"))
    }

    /// `x + dt * guide(v)` on the device; refuses a velocity with NaN or infinite values.
    fn update(
        &self,
        model: &mut Model,
        x: &Resident,
        v: &Resident,
        dt: f64,
        step: usize,
        st: &mut StageTimes,
    ) -> Result<State> {
        let start = Instant::now();
        let out = model.solver_step(x, v, self.w as f32, dt)?;
        st.solver += start.elapsed();
        if out.nonfinite > 0 {
            return Err(Error::NonFinite {
                scale: self.scale,
                step,
                what: format!("{} velocity elements", out.nonfinite),
            });
        }
        Ok(State {
            x: out.x,
            x_in: out.x_in,
            x_in_pair: self.cfg_on.then_some(out.x_in_pair),
        })
    }

    /// One solver step from `t` to `tn`.
    pub fn step(
        &mut self,
        model: &mut Model,
        state: State,
        solver: Solver,
        (t, tn): (f64, f64),
        step: usize,
        st: &mut StageTimes,
    ) -> Result<State> {
        let dt = tn - t;
        let v = self.velocity(model, &state, t, st)?;
        match solver {
            Solver::Euler => self.update(model, &state.x, &v, dt, step, st),
            Solver::Heun => {
                // x + dt/2 (g1 + g2), as two half updates: (x + dt/2 g1) + dt/2 g2.
                let pred = self.update(model, &state.x, &v, dt, step, st)?;
                let v2 = self.velocity(model, &pred, tn, st)?;
                let half = self.update(model, &state.x, &v, 0.5 * dt, step, st)?;
                self.update(model, &half.x, &v2, 0.5 * dt, step, st)
            }
        }
    }
}
