//! Every `flowar …` command the README, `docs/` and `bench/README.md` show exists in the
//! real CLI, so the docs cannot drift from the code (a renamed or removed flag fails here):
//! - each command line in a shell code block (`sh`, `bash`, `console`, unlabelled; in a
//!   `text` block only the `$ ` prompt lines) is parsed by the built `flowar` with
//!   `FLOWAR_TEST_PARSE_ONLY=1`, which parses and exits without running anything, and must
//!   parse; backslash continuations are joined, comments, prompts, `VAR=value` prefixes and
//!   redirections dropped, `cargo run … -- ARGS` and `target/*/flowar` read as `flowar`;
//! - a synopsis (a code-block line with `[--optional]` parts) and every inline
//!   `` `flowar SUB …` `` span (the CLI table's rows, commands quoted in prose) must name a
//!   subcommand `flowar --help` lists and only flags `flowar SUB --help` lists: they are
//!   forms and fragments, not whole commands, so only their names are checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built binary's parse-only switch (see `cli/src/main.rs`).
const PARSE_ONLY: &str = "FLOWAR_TEST_PARSE_ONLY";

/// What a parse-only run says on stderr, proof that it parsed and ran nothing.
const PARSED: &str = "the command line parses; nothing was run";

/// The documents checked: the README, every page of `docs/`, and the benchmark README
/// that `docs/cli.md` sends readers to for `bench`'s flags.
fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    files.push(root.join("bench/README.md"));
    files
}

/// One `flowar` invocation a document shows.
#[derive(Debug)]
struct Shown {
    /// `file:line` of its first line.
    at: String,
    /// `flowar`'s arguments (the subcommand first).
    args: Vec<String>,
    /// A whole command line (parsed as is) or a form/fragment (names checked only).
    whole: bool,
}

/// A word of a shell line, or an operator that ends a command (`|`, `&&`, `;`, …) or
/// redirects (`>`, `2>&1`, …).
#[derive(Debug, PartialEq)]
enum Word {
    Text(String),
    Ends,
    /// A redirection; `true` when a file name follows it as the next word.
    Redirect(bool),
}

/// Splits a shell line into words as `sh` would for these purposes: quotes and backslashes
/// resolved, a `#` starting a word ends the line, operators separate words.
fn shell_words(line: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let flush = |cur: &mut String, in_word: &mut bool, words: &mut Vec<Word>| {
        if *in_word {
            words.push(Word::Text(std::mem::take(cur)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => flush(&mut cur, &mut in_word, &mut words),
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    cur.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            cur.push(chars.next().unwrap_or('\\'))
                        }
                        _ => cur.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '|' | ';' | '&' => {
                flush(&mut cur, &mut in_word, &mut words);
                while matches!(chars.peek(), Some('|' | '&')) {
                    chars.next();
                }
                words.push(Word::Ends);
            }
            '>' | '<' => {
                // `2>`: the digits were the file descriptor, not a word.
                if in_word && cur.bytes().all(|b| b.is_ascii_digit()) {
                    cur.clear();
                    in_word = false;
                }
                flush(&mut cur, &mut in_word, &mut words);
                while matches!(chars.peek(), Some('>' | '<')) {
                    chars.next();
                }
                let to_fd = chars.peek() == Some(&'&');
                if to_fd {
                    chars.next();
                    while chars
                        .peek()
                        .is_some_and(|c| c.is_ascii_digit() || *c == '-')
                    {
                        chars.next();
                    }
                }
                words.push(Word::Redirect(!to_fd));
            }
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    flush(&mut cur, &mut in_word, &mut words);
    words
}

/// Whether `word` names the `flowar` binary: `flowar`, or a path to it
/// (`target/release/flowar`).
fn is_flowar(word: &str) -> bool {
    word == "flowar" || word.ends_with("/flowar")
}

/// `flowar`'s arguments in one simple command (`words` without operators), if it runs
/// `flowar`: directly, or through `cargo run` of the default package or `flowar-cli`.
fn flowar_args(words: &[String]) -> Option<Vec<String>> {
    let is_assignment = |w: &String| {
        w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit()
        })
    };
    let words: Vec<&String> = words.iter().skip_while(|w| is_assignment(w)).collect();
    let first = words.first()?;
    if is_flowar(first) {
        return Some(words[1..].iter().map(|w| w.to_string()).collect());
    }
    if first.as_str() != "cargo" || words.get(1).map(|w| w.as_str()) != Some("run") {
        return None;
    }
    let split = words.iter().position(|w| w.as_str() == "--");
    let cargo_opts = &words[2..split.unwrap_or(words.len())];
    for pair in cargo_opts.windows(2) {
        let ours = match pair[0].as_str() {
            "-p" | "--package" => pair[1].as_str() == "flowar-cli",
            "--bin" => pair[1].as_str() == "flowar",
            "--example" => false,
            _ => true,
        };
        if !ours {
            return None;
        }
    }
    Some(
        split
            .map(|i| words[i + 1..].iter().map(|w| w.to_string()).collect())
            .unwrap_or_default(),
    )
}

/// The `flowar` commands in one (continuation-joined) shell line, at `at`.
fn commands_in(line: &str, at: &str, out: &mut Vec<Shown>) {
    // `[--flag X]`: a synopsis of a command's forms, not a command.
    let synopsis = line.contains("[-");
    if synopsis {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| is_flowar(w)) {
            out.push(Shown {
                at: at.to_string(),
                args: words[i + 1..].iter().map(|w| w.to_string()).collect(),
                whole: false,
            });
        }
        return;
    }
    let mut simple: Vec<String> = Vec::new();
    let mut redirect_target = false;
    let mut finish = |simple: &mut Vec<String>| {
        if let Some(args) = flowar_args(simple) {
            out.push(Shown {
                at: at.to_string(),
                args,
                whole: true,
            });
        }
        simple.clear();
    };
    for w in shell_words(line) {
        match w {
            Word::Text(_) if redirect_target => redirect_target = false,
            Word::Text(t) => simple.push(t),
            Word::Redirect(file_follows) => redirect_target = file_follows,
            Word::Ends => finish(&mut simple),
        }
    }
    finish(&mut simple);
}

/// Languages whose code blocks hold shell command lines.
const SHELL: [&str; 6] = ["", "sh", "bash", "shell", "console", "zsh"];

/// Every `flowar` invocation `text` (the document `name`) shows: in code blocks, and in
/// inline code spans outside them.
fn shown_in(name: &str, text: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let Some(lang) = trimmed
            .strip_prefix("```")
            .or_else(|| trimmed.strip_prefix("~~~"))
        else {
            inline_spans(lines[i], &format!("{name}:{}", i + 1), &mut out);
            i += 1;
            continue;
        };
        let fence = &trimmed[..3];
        let lang = lang.split_whitespace().next().unwrap_or("").to_lowercase();
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim_start().starts_with(fence) {
            end += 1;
        }
        let block = &lines[start..end];
        // With `$ ` prompts, only the prompt lines are commands (the rest is output); a
        // `text` block holds commands only behind prompts.
        let prompts = block.iter().any(|l| l.trim_start().starts_with("$ "));
        if SHELL.contains(&lang.as_str()) || (lang == "text" && prompts) {
            let mut j = 0;
            while j < block.len() {
                let first = j;
                let mut line = block[j].trim().to_string();
                while line.ends_with('\\') && j + 1 < block.len() {
                    line.pop();
                    j += 1;
                    line.push(' ');
                    line.push_str(block[j].trim());
                }
                j += 1;
                let command = if prompts {
                    match line.strip_prefix("$ ") {
                        Some(c) => c.to_string(),
                        None => continue,
                    }
                } else {
                    line
                };
                commands_in(&command, &format!("{name}:{}", start + first + 1), &mut out);
            }
        }
        i = end + 1;
    }
    out
}

/// The `` `flowar …` `` spans of one prose line (a table row's `\|` read as `|`).
fn inline_spans(line: &str, at: &str, out: &mut Vec<Shown>) {
    let mut parts = line.split('`');
    parts.next();
    while let Some(span) = parts.next() {
        let span = span.replace("\\|", "|");
        let words: Vec<&str> = span.split_whitespace().collect();
        if words.first().is_some_and(|w| is_flowar(w)) {
            out.push(Shown {
                at: at.to_string(),
                args: words[1..].iter().map(|w| w.to_string()).collect(),
                whole: false,
            });
        }
        // The text between this span and the next.
        parts.next();
    }
}

/// The subcommands `flowar --help` lists, and the long and short flags each one's
/// `--help` lists (the top level's under the empty name).
fn cli_names() -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let help = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_flowar"))
            .args(args)
            .output()
            .expect("run flowar --help");
        assert!(o.status.success(), "flowar {args:?}: {o:?}");
        String::from_utf8(o.stdout).expect("UTF-8 help")
    };
    let top = help(&["--help"]);
    let mut subcommands = BTreeSet::new();
    let mut in_commands = false;
    for line in top.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_commands = line == "Commands:";
            continue;
        }
        if in_commands {
            if let Some(name) = line
                .strip_prefix("  ")
                .and_then(|l| l.split_whitespace().next())
            {
                subcommands.insert(name.to_string());
            }
        }
    }
    let flags_of = |text: &str| -> BTreeSet<String> {
        let mut flags = BTreeSet::new();
        for line in text.lines() {
            // Option lines are indented 2 (`-h, --help`) or 6 (`--out <OUT>`) spaces;
            // deeper lines are descriptions, which may mention other flags.
            let l = line.trim_start();
            let indent = line.len() - l.len();
            if !l.starts_with('-') || indent == 0 || indent > 6 {
                continue;
            }
            for part in l.split(", ") {
                let name = part.split([' ', '<', '=', '.']).next().unwrap_or("");
                if name.starts_with('-') && name.len() > 1 {
                    flags.insert(name.to_string());
                }
            }
        }
        flags
    };
    let mut flags = BTreeMap::new();
    flags.insert(String::new(), flags_of(&top));
    for s in &subcommands {
        // clap's own `help` subcommand takes subcommand names, no flags.
        let listed = if s == "help" {
            BTreeSet::new()
        } else {
            flags_of(&help(&[s, "--help"]))
        };
        flags.insert(s.clone(), listed);
    }
    (subcommands, flags)
}

/// The flags a form or fragment names: `--name` and `-x` words, with the markdown and
/// synopsis punctuation around them (`[`, `]`, `|`, `,`, `.`) taken off.
fn named_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        for piece in a.split('|') {
            let w = piece.trim_start_matches(['[', '(']);
            let w = w
                .split(['=', ']', ')', ',', '`', ':'])
                .next()
                .unwrap_or("")
                .trim_end_matches('.');
            let is_long = w.starts_with("--")
                && w.len() > 2
                && w[2..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let is_short =
                w.len() == 2 && w.starts_with('-') && w.as_bytes()[1].is_ascii_alphabetic();
            if is_long || is_short {
                out.push(w.to_string());
            }
        }
    }
    out
}

/// What is wrong with each invocation in `shown` (empty when nothing is): a whole command
/// that does not parse, or a form naming a subcommand or flag the CLI lacks.
fn problems(shown: &[Shown]) -> Vec<String> {
    let (subcommands, flags) = cli_names();
    let cwd = tempfile::tempdir().unwrap();
    let mut bad = Vec::new();
    for s in shown {
        let line = format!("flowar {}", s.args.join(" "));
        if s.whole {
            let o = Command::new(env!("CARGO_BIN_EXE_flowar"))
                .args(&s.args)
                .env(PARSE_ONLY, "1")
                .current_dir(cwd.path())
                .output()
                .expect("run flowar");
            let stderr = String::from_utf8_lossy(&o.stderr);
            // The parse-only mode exits 3, never 0 (a job that inherited it must fail).
            if !(o.status.code() == Some(3) && stderr.contains(PARSED)) {
                bad.push(format!(
                    "{}: `{line}` does not parse ({}): {}",
                    s.at,
                    o.status,
                    stderr.trim()
                ));
            }
            continue;
        }
        let sub = s
            .args
            .first()
            .filter(|a| !a.starts_with('-'))
            .map(|a| a.trim_end_matches(['.', ',', ':', ';']).to_string());
        // A placeholder (`flowar …`, `flowar SUB`) names no subcommand to check.
        if sub
            .as_deref()
            .is_some_and(|w| !w.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        {
            continue;
        }
        let known = match &sub {
            Some(name) if !subcommands.contains(name) => {
                bad.push(format!("{}: `{line}`: no subcommand `{name}`", s.at));
                continue;
            }
            Some(name) => &flags[name],
            None => &flags[""],
        };
        for f in named_flags(&s.args) {
            if !known.contains(&f) {
                bad.push(format!(
                    "{}: `{line}`: `flowar {}` has no flag `{f}`",
                    s.at,
                    sub.as_deref().unwrap_or("")
                ));
            }
        }
    }
    bad
}

#[test]
fn every_flowar_command_in_the_docs_parses_against_the_cli() {
    let mut shown = Vec::new();
    for path in doc_files() {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .unwrap_or(&path)
            .display()
            .to_string();
        shown.extend(shown_in(&name, &text));
    }
    // The docs show commands of every kind; finding none would mean the reading broke.
    let whole = shown.iter().filter(|s| s.whole).count();
    assert!(
        whole >= 15,
        "only {whole} whole commands found in the docs: {shown:#?}"
    );
    for sub in ["convert", "generate", "edit", "verify", "pack", "bench"] {
        assert!(
            shown
                .iter()
                .any(|s| s.whole && s.args.first().map(String::as_str) == Some(sub)),
            "no `flowar {sub}` command found in the docs"
        );
    }
    let bad = problems(&shown);
    assert!(
        bad.is_empty(),
        "stale commands in the docs:\n{}",
        bad.join("\n")
    );
}

/// The reading and the checks above, on a page written to hold each kind of mistake (and
/// each kind of line that is not a command): every mistake is found, nothing else is.
#[test]
fn a_stale_command_in_a_page_is_found() {
    let page = r#"
Prose naming `flowar generate --no-such-flag` and `flowar nosuch` and `flowar-cli`, `flowar SUB …`.
| `flowar pack DIR... --out FILE [--count N] [--fource]` | a table row |

```sh
flowar generate --count 2 \
    --grid g.png   # a comment --not-a-flag
FOO=1 flowar verify --model m --reference r.safetensors 2>&1 | tee log
flowar generate --cuont 3
cargo run --release -- edit --image a.png --mask-invert
cargo run -p flowar-fuzz -- run all --not-ours
target/release/flowar bench --runs 3 [--plot out.png] [--plott x]
```

```text
$ flowar inspect m --verbose
flowar generate --this-is-output
```

```python
flowar.convert("a", "b", "c")  # flowar convert --nope
```
"#;
    let shown = shown_in("page.md", page);
    let whole: Vec<String> = shown
        .iter()
        .filter(|s| s.whole)
        .map(|s| s.args.join(" "))
        .collect();
    assert_eq!(
        whole,
        [
            "generate --count 2 --grid g.png",
            "verify --model m --reference r.safetensors",
            "generate --cuont 3",
            "edit --image a.png --mask-invert",
            "inspect m --verbose",
        ]
    );
    let bad = problems(&shown);
    let found = |at: &str, needle: &str| {
        assert!(
            bad.iter().any(|b| b.starts_with(at) && b.contains(needle)),
            "{at} `{needle}` not found in {bad:#?}"
        )
    };
    found("page.md:2:", "has no flag `--no-such-flag`");
    found("page.md:2:", "no subcommand `nosuch`");
    found("page.md:3:", "has no flag `--fource`");
    found("page.md:9:", "`flowar generate --cuont 3` does not parse");
    found("page.md:10:", "--mask-invert");
    found("page.md:12:", "has no flag `--plott`");
    found("page.md:16:", "`flowar inspect m --verbose` does not parse");
    assert_eq!(bad.len(), 7, "{bad:#?}");
}
