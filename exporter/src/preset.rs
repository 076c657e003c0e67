//! The released architectures (FlowAR-S/L/H with MAR's kl16 decoder) as key/shape tables,
//! filled with seeded random weights: benchmarks and tests without downloads.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use sha2::{Digest, Sha256};

use crate::error::{ExportError, Result};
use crate::weights::WeightSource;

/// A released model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    S,
    L,
    H,
}

/// The hyper-parameters that determine a FlowAR checkpoint's keys and shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowArSpec {
    pub width: usize,
    pub encoder_depth: usize,
    pub decoder_depth: usize,
    pub head_dim: usize,
    pub flow_width: usize,
    pub flow_depth: usize,
    pub cross: bool,
    pub num_classes: usize,
    pub latent_channels: usize,
    pub scales: Vec<usize>,
}

/// The hyper-parameters of an LDM KL-VAE decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeSpec {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    pub embed_dim: usize,
    pub attn_levels: Vec<usize>,
}

impl std::str::FromStr for Preset {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "s" => Ok(Preset::S),
            "l" => Ok(Preset::L),
            "h" => Ok(Preset::H),
            _ => Err(ExportError::BadArgument(format!(
                "unknown preset `{s}` (expected s, l or h)"
            ))),
        }
    }
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::S => "FlowAR-S",
            Preset::L => "FlowAR-L",
            Preset::H => "FlowAR-H",
        }
    }

    pub fn flowar(self) -> FlowArSpec {
        let (width, depth, head_dim, flow_width, flow_depth, cross) = match self {
            Preset::S => (768, 6, 64, 1024, 2, false),
            Preset::L => (1024, 8, 64, 1024, 12, true),
            Preset::H => (1536, 15, 96, 1536, 12, true),
        };
        FlowArSpec {
            width,
            encoder_depth: depth,
            decoder_depth: depth,
            head_dim,
            flow_width,
            flow_depth,
            cross,
            num_classes: 1000,
            latent_channels: 16,
            scales: vec![1, 2, 4, 8, 16],
        }
    }

    /// MAR's kl16.
    pub fn vae() -> VaeSpec {
        VaeSpec {
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            z_channels: 16,
            embed_dim: 16,
            attn_levels: vec![],
        }
    }
}

/// `int(dim * 4 * 2 / 3)`, the SwiGLU hidden size of the reference.
pub fn mlp_hidden(dim: usize) -> usize {
    dim * 8 / 3
}

fn linear(out: &mut Vec<(String, Vec<usize>)>, key: &str, o: usize, i: usize, bias: bool) {
    out.push((format!("{key}.weight"), vec![o, i]));
    if bias {
        out.push((format!("{key}.bias"), vec![o]));
    }
}

fn mlp(out: &mut Vec<(String, Vec<usize>)>, key: &str, dim: usize) {
    let h = mlp_hidden(dim);
    linear(out, &format!("{key}.fc1_g"), h, dim, true);
    linear(out, &format!("{key}.fc1_x"), h, dim, true);
    linear(out, &format!("{key}.fc2"), dim, h, true);
}

/// Every key and shape of a FlowAR state dict (buffers `mask` and `rope.freqs` included).
pub fn flowar_keys(s: &FlowArSpec) -> Vec<(String, Vec<usize>)> {
    let (d, c, w) = (s.width, s.latent_channels, s.flow_width);
    let total: usize = s.scales.iter().map(|x| x * x).sum();
    let mut out = Vec::new();
    out.push(("class_emb.weight".into(), vec![s.num_classes + 1, d]));
    linear(&mut out, "z_proj", d, c, true);
    out.push(("z_proj_ln.weight".into(), vec![d]));
    for p in [
        "encoder_pos_embed_learned",
        "decoder_pos_embed_learned",
        "diffusion_pos_embed_learned",
    ] {
        out.push((p.into(), vec![1, total, d]));
    }
    out.push(("mask".into(), vec![1, 1, total, total]));
    for (stack, depth) in [
        ("encoder_blocks", s.encoder_depth),
        ("decoder_blocks", s.decoder_depth),
    ] {
        for k in 0..depth {
            let b = format!("{stack}.{k}");
            linear(&mut out, &format!("{b}.attn.qkv"), 3 * d, d, true);
            linear(&mut out, &format!("{b}.attn.proj"), d, d, true);
            out.push((format!("{b}.attn.rope.freqs"), vec![s.head_dim / 4]));
            mlp(&mut out, &format!("{b}.mlp"), d);
            linear(&mut out, &format!("{b}.ada_lin.1"), 6 * d, d, true);
        }
    }
    out.push(("encoder_norm.weight".into(), vec![d]));
    out.push(("decoder_norm.weight".into(), vec![d]));
    linear(&mut out, "decoder_embed", d, d, true);
    linear(&mut out, "flownet.time_embed.mlp.0", w, 256, true);
    linear(&mut out, "flownet.time_embed.mlp.2", w, w, true);
    linear(&mut out, "flownet.cond_embed", w, d, true);
    linear(&mut out, "flownet.input_proj", w, c, true);
    for j in 0..s.flow_depth {
        let b = format!("flownet.res_blocks.{j}");
        linear(&mut out, &format!("{b}.attn.qkv"), 3 * w, w, false);
        linear(&mut out, &format!("{b}.attn.proj"), w, w, true);
        out.push((format!("{b}.attn.rope.freqs"), vec![16]));
        mlp(&mut out, &format!("{b}.mlp"), w);
        if s.cross {
            linear(&mut out, &format!("{b}.ada_lin_attn"), 3 * w, w, true);
            linear(&mut out, &format!("{b}.ada_lin_mlp"), 3 * w, w, true);
            linear(&mut out, &format!("{b}.crossattn.q"), w, w, false);
            linear(&mut out, &format!("{b}.crossattn.kv"), 2 * w, d, false);
            linear(&mut out, &format!("{b}.crossattn.proj"), w, w, true);
            out.push((format!("{b}.crossattn.rope.freqs"), vec![16]));
            out.push((format!("{b}.norm2_1.weight"), vec![w]));
            out.push((format!("{b}.norm2_2.weight"), vec![d]));
        } else {
            linear(&mut out, &format!("{b}.ada_lin"), 6 * w, w, true);
        }
    }
    linear(
        &mut out,
        "flownet.final_layer.adaLN_modulation.1",
        2 * w,
        w,
        true,
    );
    linear(&mut out, "flownet.final_layer.linear", c, w, true);
    out
}

fn conv(out: &mut Vec<(String, Vec<usize>)>, key: &str, o: usize, i: usize, k: usize) {
    out.push((format!("{key}.weight"), vec![o, i, k, k]));
    out.push((format!("{key}.bias"), vec![o]));
}

fn norm(out: &mut Vec<(String, Vec<usize>)>, key: &str, ch: usize) {
    out.push((format!("{key}.weight"), vec![ch]));
    out.push((format!("{key}.bias"), vec![ch]));
}

fn resnet(out: &mut Vec<(String, Vec<usize>)>, key: &str, cin: usize, cout: usize) {
    norm(out, &format!("{key}.norm1"), cin);
    conv(out, &format!("{key}.conv1"), cout, cin, 3);
    norm(out, &format!("{key}.norm2"), cout);
    conv(out, &format!("{key}.conv2"), cout, cout, 3);
    if cin != cout {
        conv(out, &format!("{key}.nin_shortcut"), cout, cin, 1);
    }
}

fn attn(out: &mut Vec<(String, Vec<usize>)>, key: &str, ch: usize) {
    norm(out, &format!("{key}.norm"), ch);
    for p in ["q", "k", "v", "proj_out"] {
        conv(out, &format!("{key}.{p}"), ch, ch, 1);
    }
}

/// Every decoder-side key of an LDM KL-VAE (`post_quant_conv.*`, `decoder.*`).
pub fn vae_keys(s: &VaeSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    conv(&mut out, "post_quant_conv", s.z_channels, s.embed_dim, 1);
    let levels = s.ch_mult.len();
    let mut ch = s.ch * s.ch_mult[levels - 1];
    conv(&mut out, "decoder.conv_in", ch, s.z_channels, 3);
    resnet(&mut out, "decoder.mid.block_1", ch, ch);
    attn(&mut out, "decoder.mid.attn_1", ch);
    resnet(&mut out, "decoder.mid.block_2", ch, ch);
    for l in (0..levels).rev() {
        let cout = s.ch * s.ch_mult[l];
        for b in 0..=s.num_res_blocks {
            resnet(&mut out, &format!("decoder.up.{l}.block.{b}"), ch, cout);
            ch = cout;
            if s.attn_levels.contains(&l) {
                attn(&mut out, &format!("decoder.up.{l}.attn.{b}"), ch);
            }
        }
        if l != 0 {
            conv(
                &mut out,
                &format!("decoder.up.{l}.upsample.conv"),
                ch,
                ch,
                3,
            );
        }
    }
    norm(&mut out, "decoder.norm_out", ch);
    conv(&mut out, "decoder.conv_out", 3, ch, 3);
    out
}

/// Every encoder-side key of an LDM KL-VAE (`encoder.*`, `quant_conv.*`), for presets that
/// can edit (`vae_encoder.onnx`); `double_z`: the encoder's output is mean and log-variance.
pub fn vae_encoder_keys(s: &VaeSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let levels = s.ch_mult.len();
    let mut ch = s.ch;
    conv(&mut out, "encoder.conv_in", ch, 3, 3);
    for l in 0..levels {
        let cout = s.ch * s.ch_mult[l];
        for b in 0..s.num_res_blocks {
            resnet(&mut out, &format!("encoder.down.{l}.block.{b}"), ch, cout);
            ch = cout;
            if s.attn_levels.contains(&l) {
                attn(&mut out, &format!("encoder.down.{l}.attn.{b}"), ch);
            }
        }
        if l + 1 != levels {
            conv(
                &mut out,
                &format!("encoder.down.{l}.downsample.conv"),
                ch,
                ch,
                3,
            );
        }
    }
    resnet(&mut out, "encoder.mid.block_1", ch, ch);
    attn(&mut out, "encoder.mid.attn_1", ch);
    resnet(&mut out, "encoder.mid.block_2", ch, ch);
    norm(&mut out, "encoder.norm_out", ch);
    conv(&mut out, "encoder.conv_out", 2 * s.z_channels, ch, 3);
    conv(&mut out, "quant_conv", 2 * s.embed_dim, 2 * s.z_channels, 1);
    out
}

/// A whole LDM KL-VAE, decoder and encoder: what a preset converts, so that preset
/// folders edit images as released ones do.
pub fn vae_full_keys(s: &VaeSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = vae_keys(s);
    out.extend(vae_encoder_keys(s));
    out
}

/// Seeded random weights for a key/shape table. Each tensor's values depend only on the
/// seed and its key, so they are the same whatever order they are read in.
pub struct RandomWeights {
    origin: String,
    seed: u64,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl RandomWeights {
    pub fn new(origin: String, seed: u64, keys: Vec<(String, Vec<usize>)>) -> Self {
        RandomWeights {
            origin,
            seed,
            shapes: keys.into_iter().collect(),
        }
    }
}

impl WeightSource for RandomWeights {
    fn origin(&self) -> String {
        self.origin.clone()
    }
    fn keys(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.shapes.get(key).cloned()
    }
    fn load_f32(&self, key: &str) -> Result<Vec<f32>> {
        let shape = self
            .shapes
            .get(key)
            .ok_or_else(|| ExportError::MissingKey {
                origin: self.origin.clone(),
                key: key.into(),
                expected: "a preset key".into(),
            })?;
        let n: usize = shape.iter().product();
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let is_norm = key.contains("norm") || key.ends_with("_ln.weight");
        // Norm scales start at one, biases at zero, everything else small Gaussian noise.
        if is_norm && leaf == "weight" && shape.len() == 1 {
            return Ok(vec![1.0; n]);
        }
        if leaf == "bias" {
            return Ok(vec![0.0; n]);
        }
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(key.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let mut rng = ChaCha8Rng::from_seed(digest);
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let std = if shape.len() >= 2 {
            (1.0 / fan_in as f32).sqrt()
        } else {
            0.02
        };
        let dist = Normal::new(0.0f32, std).map_err(|e| ExportError::BadArgument(e.to_string()))?;
        Ok((0..n).map(|_| dist.sample(&mut rng)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(keys: &[(String, Vec<usize>)]) -> usize {
        keys.iter()
            .filter(|(k, _)| k != "mask" && !k.ends_with("rope.freqs"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn released_parameter_counts() {
        let m = |p: Preset| (params(&flowar_keys(&p.flowar())) as f64 / 1e5).round() / 10.0;
        assert_eq!(m(Preset::S), 171.7);
        assert_eq!(m(Preset::L), 586.9);
        assert_eq!(m(Preset::H), 1913.3);
        let vae = (params(&vae_keys(&Preset::vae())) as f64 / 1e5).round() / 10.0;
        assert_eq!(vae, 38.2);
    }

    /// The encoder table against a real LDM KL-VAE checkpoint: the edit-kl16 fixture
    /// (written by the reference's own VAE code) holds exactly these encoder keys and
    /// shapes for its hyper-parameters.
    #[test]
    fn encoder_keys_match_an_ldm_checkpoint() {
        use crate::checkpoint::Checkpoint;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/edit-kl16/vae.ckpt");
        let ckpt = Checkpoint::open(&path).unwrap();
        let attn_levels = (0..5)
            .filter(|l| {
                ckpt.shape(&format!("encoder.down.{l}.attn.0.norm.weight"))
                    .is_some()
            })
            .collect();
        let spec = VaeSpec {
            ch: 32,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 1,
            z_channels: 16,
            embed_dim: 16,
            attn_levels,
        };
        let ours: BTreeMap<String, Vec<usize>> = vae_encoder_keys(&spec).into_iter().collect();
        let theirs: BTreeMap<String, Vec<usize>> = ckpt
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("encoder.") || k.starts_with("quant_conv."))
            .map(|k| (k.to_string(), ckpt.shape(k).unwrap()))
            .collect();
        assert_eq!(ours, theirs);
    }
}
