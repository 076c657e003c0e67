//! The fuzz targets: each takes raw bytes and drives one reader the way the CLI does.

use std::path::{Path, PathBuf};

use flowar_exporter::arch;
use flowar_exporter::checkpoint::Checkpoint;
use flowar_exporter::vae_checkpoint::{DiffusersVaeConfig, VaeCheckpoint};
use flowar_exporter::weights::WeightSource;
use flowar_runtime::backend::tract_backend::TractSession;
use flowar_runtime::backend::BackendOptions;
use flowar_runtime::manifest::Manifest;
use flowar_runtime::sampler::noise;

/// Which reader to fuzz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Whole `.pth` files: zip container, data.pkl, storages.
    Pth,
    /// Only `data.pkl`, wrapped in a valid archive with fixed storages "0".."3".
    Pickle,
    /// `.safetensors` checkpoints.
    SafeTensors,
    /// `manifest.json` text through `Manifest::parse`, then the per-scale tables the
    /// runtime derives from it.
    Manifest,
    /// `--noise-file` safetensors through `noise::load_recorded`.
    Noise,
    /// ONNX graph bytes opened (parsed, typed, optimized) in tract.
    OnnxTract,
    /// A diffusers VAE `config.json` through `DiffusersVaeConfig::parse`, then checked
    /// against real diffusers VAE weights as `convert` checks it (decoder, encoder).
    VaeConfig,
}

impl TargetKind {
    pub const ALL: [TargetKind; 7] = [
        TargetKind::Pth,
        TargetKind::Pickle,
        TargetKind::SafeTensors,
        TargetKind::Manifest,
        TargetKind::Noise,
        TargetKind::OnnxTract,
        TargetKind::VaeConfig,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Pth => "pth",
            TargetKind::Pickle => "pickle",
            TargetKind::SafeTensors => "safetensors",
            TargetKind::Manifest => "manifest",
            TargetKind::Noise => "noise",
            TargetKind::OnnxTract => "onnx-tract",
            TargetKind::VaeConfig => "vae-config",
        }
    }

    pub fn from_name(s: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Mixed into the RNG seed so targets draw different sequences.
    pub fn salt(self) -> u64 {
        self.name().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// Format tokens the mutator inserts.
    pub fn dictionary(self) -> &'static [&'static [u8]] {
        match self {
            TargetKind::Pth => &[
                b"PK\x03\x04",
                b"PK\x01\x02",
                b"PK\x05\x06",
                b"PK\x06\x06",
                b"PK\x06\x07",
                b"archive/data.pkl",
                b"archive/data/0",
                b"\xff\xff\xff\xff",
                b"\x00\x00\x00\x00",
                b"big",
            ],
            TargetKind::Pickle => &[
                b"(",
                b")",
                b"t",
                b"R",
                b"Q",
                b"u",
                b"s",
                b"}",
                b"]",
                b"e",
                b"a",
                b"b",
                b"0",
                b"2",
                b"\x85",
                b"\x86",
                b"\x87",
                b"\x81",
                b"\x93",
                b"\x94",
                b"\x95\x00\x00\x00\x00\x00\x00\x00\x00",
                b"q\x00",
                b"h\x00",
                b"r\xff\xff\xff\xff",
                b"j\xff\xff\xff\xff",
                b"X\xff\xff\xff\x7f",
                b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f",
                b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff",
                b"\x8b\xff\xff\xff\x7f",
                b"J\xff\xff\xff\xff",
                b"J\xff\xff\xff\x7f",
                b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
                b"ctorch\nFloatStorage\n",
                b"ctorch\nLongStorage\n",
                b"ctorch\nUntypedStorage\n",
                b"ctorch._utils\n_rebuild_tensor_v2\n",
                b"ctorch._utils\n_rebuild_parameter\n",
                b"ccollections\nOrderedDict\n",
                b"cos\nsystem\n",
                b"cbuiltins\neval\n",
                b"csubprocess\nPopen\n",
                b"\x8c\x05torch",
                b"\x8c\x0cFloatStorage",
                b"X\x07\x00\x00\x00storage",
            ],
            TargetKind::SafeTensors | TargetKind::Noise => &[
                b"{",
                b"}",
                b"[",
                b"]",
                b",",
                b"\"",
                b"\"dtype\":\"F32\"",
                b"\"I64\"",
                b"\"F16\"",
                b"\"BF16\"",
                b"\"F64\"",
                b"\"shape\":[",
                b"\"data_offsets\":[",
                b"\"__metadata__\":{}",
                b"18446744073709551615",
                b"4294967296",
                b"1099511627776",
                b"-1",
                b"0",
                b"noise.s0",
                b"noise.s1",
            ],
            TargetKind::Manifest => &[
                b"null",
                b"true",
                b"-1",
                b"0",
                b"1e308",
                b"1e999",
                b"-0.0",
                b"NaN",
                b"65536",
                b"4294967297",
                b"18446744073709551615",
                b"\"\"",
                b"[]",
                b"{}",
                b"[0]",
                b"[1, 1]",
                b"[1, 65536]",
                b"\"../../../etc/passwd\"",
                b"\"/dev/zero\"",
                b"\"format_version\": 2",
                b"\"scales\": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]",
                b"\"ar_head_dim\": 4294967296",
            ],
            TargetKind::OnnxTract => &[
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                b"\x80\x80\x80\x80\x08",
                b"\xff\xff\xff\xff\x0f",
                b"\x00",
                b"Add",
                b"Mul",
                b"MatMul",
                b"Reshape",
                b"Expand",
                b"Tile",
                b"Range",
                b"ConstantOfShape",
                b"Loop",
                b"If",
                b"Gather",
                b"Concat",
                b"Softmax",
            ],
            TargetKind::VaeConfig => &[
                b"{",
                b"}",
                b"[",
                b"]",
                b",",
                b":",
                b"\"",
                b"null",
                b"true",
                b"false",
                b"0",
                b"-1",
                b"1e308",
                b"-0.0",
                b"4294967297",
                b"18446744073709551615",
                b"[]",
                b"{}",
                b"\"\"",
                b"\"_class_name\": \"AutoencoderKL\"",
                b"\"AutoencoderKLWan\"",
                b"\"VQModel\"",
                b"\"AutoencoderDC\"",
                b"\"act_fn\": \"gelu\"",
                b"\"latent_channels\": 16",
                b"\"block_out_channels\": [32, 32, 64, 64]",
                b"\"block_out_channels\": [128, 256, 512, 512]",
                b"\"layers_per_block\": 2",
                b"\"norm_num_groups\": 0",
                b"\"norm_num_groups\": 16",
                b"\"out_channels\": 4",
                b"\"up_block_types\": [\"AttnUpDecoderBlock2D\"]",
                b"\"down_block_types\": [\"AttnDownEncoderBlock2D\"]",
                b"\"scaling_factor\": null",
                b"\"shift_factor\": 0.1159",
                b"\"latents_mean\": [0.0, 0.0, 0.0, 0.0]",
                b"\"use_post_quant_conv\": false",
                b"\"use_quant_conv\": false",
                b"\"mid_block_add_attention\": false",
                b"\"force_upcast\": false",
            ],
        }
    }
}

/// The object keys and JSON values [`crate::mutate::mutate_json`] uses on `vae-config`
/// inputs: every field the config reader knows, and values at and around the edges of
/// what it accepts.
const VAE_CONFIG_KEYS: &[&str] = &[
    "_class_name",
    "act_fn",
    "latent_channels",
    "block_out_channels",
    "layers_per_block",
    "norm_num_groups",
    "out_channels",
    "up_block_types",
    "down_block_types",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "use_post_quant_conv",
    "use_quant_conv",
    "mid_block_add_attention",
    "force_upcast",
    "sample_size",
];
const VAE_CONFIG_VALUES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "1",
    "-1",
    "2",
    "3",
    "4",
    "16",
    "32",
    "64",
    "0.5",
    "-0.0",
    "1e-300",
    "1e308",
    "4294967297",
    "18446744073709551615",
    "-9223372036854775808",
    "\"\"",
    "\"silu\"",
    "\"AutoencoderKL\"",
    "\"AutoencoderKLWan\"",
    "\"UpDecoderBlock2D\"",
    "\"AttnUpDecoderBlock2D\"",
    "\"DownEncoderBlock2D\"",
    "[]",
    "{}",
    "[32]",
    "[0]",
    "[32, 32, 64, 64]",
    "[64, 32, 32, 64]",
    "[0.0, 0.0, 0.0, 0.0]",
    "[\"UpDecoderBlock2D\"]",
];

impl TargetKind {
    /// Keys and values for structure-aware JSON mutations, for targets that read JSON
    /// (half their mutations; byte mutations still reach the JSON parser's errors).
    pub fn json_mutation(self) -> Option<(&'static [&'static str], &'static [&'static str])> {
        match self {
            TargetKind::VaeConfig => Some((VAE_CONFIG_KEYS, VAE_CONFIG_VALUES)),
            _ => None,
        }
    }
}

/// A target with its scratch folder (inputs are written to files there, since the
/// readers take paths as the CLI gives them).
pub struct Target {
    pub kind: TargetKind,
    dir: tempfile::TempDir,
    file: PathBuf,
    /// The weights a `vae-config` input is checked against (empty for other targets).
    vaes: Vec<VaeCheckpoint>,
}

/// The diffusers VAE folders of the test fixtures whose configs seed the `vae-config`
/// target (`edit-sd-f8c4/vae/config.json` is byte for byte `sd-f8c4`'s).
pub fn vae_config_fixtures() -> [PathBuf; 2] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    [root.join("flux-f8c16/vae"), root.join("sd-f8c4/vae")]
}

/// Everything `convert` checks of a diffusers config against its weights before building
/// graphs: the decoder's architecture (with the config's GroupNorm groups), then the
/// encoder's.
fn check_vae_config(vae: &dyn WeightSource, cfg: &DiffusersVaeConfig) -> Result<(), String> {
    let d = arch::detect_vae_with(vae, Some(cfg)).map_err(|e| e.to_string())?;
    let e = arch::detect_encoder(vae, d.arch.layout, d.latent_channels, d.arch.norm_groups)
        .map_err(|e| e.to_string())?;
    if let Some(e) = e {
        arch::check_encoder_config(&e, cfg, &vae.origin()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Storages "0".."3" the `pickle` target's archives hold: 16 float32 values each.
fn fixed_storages() -> Vec<(String, Vec<u8>)> {
    (0..4)
        .map(|k| {
            let bytes = (0..16)
                .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
                .collect();
            (k.to_string(), bytes)
        })
        .collect()
}

/// Opens a checkpoint and does everything convert and inspect do with one short of
/// building graphs: every tensor's dtype, shape and values, and architecture detection.
fn exercise_checkpoint(path: &Path) -> Result<(), String> {
    let ck = Checkpoint::open(path).map_err(|e| e.to_string())?;
    let _ = ck.total_params();
    let _ = ck.skipped();
    let _ = ck.format();
    let mut first_err = None;
    for key in ck.keys() {
        let info = ck.info(key).cloned();
        match ck.load_f32(key) {
            Ok(v) => {
                if let Some(i) = info {
                    assert_eq!(
                        v.len(),
                        i.numel(),
                        "load_f32 returned the wrong length for {key}"
                    );
                }
            }
            Err(e) => {
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    for (key, _) in ck.skipped() {
        let _ = ck.load_f32(key);
    }
    let f = arch::detect_flowar(&ck);
    let v = arch::detect_vae(&ck);
    if let (Ok(_), Ok(_)) = (&f, &v) {
        let _ = flowar_exporter::convert::detect(&ck, &ck, None);
    }
    // Detection failing is a normal outcome (most seeds are not whole models).
    let _ = (f, v);
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Target {
    pub fn new(kind: TargetKind) -> Target {
        let dir = tempfile::Builder::new()
            .prefix(&format!("flowar-fuzz-{}-", kind.name()))
            .tempdir()
            .expect("scratch folder");
        let ext = match kind {
            TargetKind::Pth | TargetKind::Pickle => "input.pth",
            TargetKind::SafeTensors | TargetKind::Noise => "input.safetensors",
            TargetKind::Manifest => "manifest.json",
            TargetKind::OnnxTract => "input.onnx",
            TargetKind::VaeConfig => "config.json",
        };
        let file = dir.path().join(ext);
        let vaes = match kind {
            TargetKind::VaeConfig => vae_config_fixtures()
                .iter()
                .map(|d| {
                    VaeCheckpoint::open(d)
                        .unwrap_or_else(|e| panic!("the vae-config target's weights: {e}"))
                })
                .collect(),
            _ => Vec::new(),
        };
        Target {
            kind,
            dir,
            file,
            vaes,
        }
    }

    /// The scratch folder (the last input is left there if the process dies).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        std::fs::write(&self.file, bytes).map_err(|e| format!("scratch write: {e}"))
    }

    /// Runs one input. Errors are the expected outcome for most inputs; panics are bugs.
    pub fn exec(&mut self, input: &[u8]) -> Result<(), String> {
        match self.kind {
            TargetKind::Pth | TargetKind::SafeTensors => {
                self.write(input)?;
                exercise_checkpoint(&self.file)
            }
            TargetKind::Pickle => {
                let zip = crate::torch::torch_zip("archive", Some(input), &fixed_storages());
                self.write(&zip)?;
                exercise_checkpoint(&self.file)
            }
            TargetKind::Manifest => {
                let text = String::from_utf8_lossy(input);
                let m = Manifest::parse(&text, &self.file).map_err(|e| e.to_string())?;
                // What Model::load derives from a manifest before running anything.
                let r = &m.rope;
                for &side in &m.scales {
                    let _ =
                        flowar_runtime::rope::tables(side, r.ar_head_dim, r.theta, r.grid_constant);
                    let _ = flowar_runtime::rope::tables(
                        side,
                        r.flow_head_dim,
                        r.theta,
                        r.grid_constant,
                    );
                }
                let _ = flowar_runtime::model::KvCache::empty(&m, 2);
                let _ = m.final_grid();
                let _ = m.class_id("0");
                let _ = m.class_id("no-such-class");
                let _ = m.class_id(&m.num_classes.to_string());
                for (_, g) in m.graphs.all() {
                    let _ = m.graph_path(self.dir.path(), g);
                }
                Ok(())
            }
            TargetKind::Noise => {
                self.write(input)?;
                // The seeds hold noise for 2 rows, scales [1, 2], 4 channels; ask for that
                // and for shapes that do not fit.
                let a = noise::load_recorded(&self.file, "noise.", 2, &[1, 2], 4);
                let _ = noise::load_recorded(&self.file, "noise.", 4, &[1, 2, 4], 16);
                a.map(|_| ()).map_err(|e| e.to_string())
            }
            TargetKind::OnnxTract => {
                self.write(input)?;
                TractSession::open(&self.file, &BackendOptions::default())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            TargetKind::VaeConfig => {
                // `load` is read_to_string + `parse`; parsing in memory keeps the target's
                // rate off the disk (a file write per input took 1 ms on a busy machine).
                let text = std::str::from_utf8(input)
                    .map_err(|e| format!("{}: not UTF-8: {e}", self.file.display()))?;
                let cfg = DiffusersVaeConfig::parse(text, &self.file).map_err(|e| e.to_string())?;
                // The decode rule's numbers and the float16 rule, as convert reads them.
                let _ = (cfg.scaling_factor(), cfg.shift(), cfg.force_upcast);
                // Accepted when the config describes one of the VAEs (each seed describes
                // one); refused with the first VAE's disagreement otherwise.
                let mut first_err = None;
                for vae in &self.vaes {
                    match check_vae_config(vae, &cfg) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                Err(first_err.unwrap_or_else(|| "no VAE weights to check against".into()))
            }
        }
    }
}
