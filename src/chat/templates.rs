//! [`ChatTemplates`]: a model's chat templates (none, one, or several named ones) as its
//! folder holds them (`chat_template.jinja`, `chat_template.json`, `tokenizer_config.json`),
//! and the choice of one for a conversation.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{ChatOptions, ChatTemplate};
use crate::error::{Error, Result};
use crate::tokenizer::{read_json_if_exists, read_tokenizer_config, SpecialTokens};

/// The chat templates of a model: none, one, or several named ones.
#[derive(Debug, Clone, Default)]
pub struct ChatTemplates {
    /// `(name, template)`; a single template is named `default` and flagged `single`.
    templates: Vec<(String, ChatTemplate)>,
    single: bool,
}

impl ChatTemplates {
    /// One template.
    pub fn single(template: ChatTemplate) -> Self {
        ChatTemplates {
            templates: vec![("default".into(), template)],
            single: true,
        }
    }

    /// Named templates (e.g. `default` and `tool_use`).
    pub fn named(templates: impl IntoIterator<Item = (String, ChatTemplate)>) -> Self {
        ChatTemplates {
            templates: templates.into_iter().collect(),
            single: false,
        }
    }

    /// Reads the templates of a checkpoint folder as transformers does: if
    /// `chat_template.jinja` or `additional_chat_templates/*.jinja` exist, they are the
    /// templates (the first is named `default`, the others by file name); otherwise
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of `{"name",
    /// "template"}`); otherwise, beyond what transformers' tokenizers read,
    /// `chat_template.json`'s `chat_template` (processor format). No template at all is
    /// not an error (the set is empty).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_tokenizer_config(dir)?;
        Self::from_dir_and_config(dir, config.as_ref())
    }

    pub(crate) fn from_dir_and_config(dir: &Path, config: Option<&Value>) -> Result<Self> {
        let mut files = Vec::new();
        let main = dir.join("chat_template.jinja");
        if let Some(src) = read_text_if_exists(&main)? {
            files.push((
                "default".to_string(),
                ChatTemplate::labelled(src, main.display().to_string()),
            ));
        }
        let extra_dir = dir.join("additional_chat_templates");
        if extra_dir.is_dir() {
            let mut extra: Vec<_> = std::fs::read_dir(&extra_dir)
                .map_err(|e| Error::io(&extra_dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("jinja"))
                .collect();
            extra.sort();
            for path in extra {
                let Some(name) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                let src = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                files.push((
                    name,
                    ChatTemplate::labelled(src, path.display().to_string()),
                ));
            }
        }
        if !files.is_empty() {
            if files.len() == 1 && files[0].0 == "default" {
                return Ok(Self::single(files.remove(0).1));
            }
            return Ok(Self::named(files));
        }
        let config_path = dir.join("tokenizer_config.json");
        if let Some(t) = config.and_then(|c| c.get("chat_template")) {
            return Self::from_json(t, &config_path.display().to_string()).map_err(|reason| {
                Error::Tokenizer {
                    path: Some(config_path.clone()),
                    reason,
                }
            });
        }
        let processor = dir.join("chat_template.json");
        let bad = |path, reason| Error::Tokenizer {
            path: Some(path),
            reason,
        };
        if let Some(v) = read_json_if_exists(&processor, bad)? {
            if let Some(t) = v.get("chat_template") {
                return Self::from_json(t, &processor.display().to_string()).map_err(|reason| {
                    Error::Tokenizer {
                        path: Some(processor.clone()),
                        reason,
                    }
                });
            }
        }
        Ok(Self::default())
    }

    /// A `chat_template` JSON value: a string, a list of `{"name", "template"}`, or null.
    fn from_json(v: &Value, label: &str) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(Self::default()),
            Value::String(s) => Ok(Self::single(ChatTemplate::labelled(
                s.clone(),
                label.to_string(),
            ))),
            Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    let name = item.get("name").and_then(Value::as_str);
                    let src = item.get("template").and_then(Value::as_str);
                    let (Some(name), Some(src)) = (name, src) else {
                        return Err(
                            "`chat_template` list entries must be {\"name\": ..., \"template\": ...}"
                                .into(),
                        );
                    };
                    out.push((
                        name.to_string(),
                        ChatTemplate::labelled(src.to_string(), format!("{label} ({name:?})")),
                    ));
                }
                Ok(Self::named(out))
            }
            Value::Object(map) => Ok(Self::named(map.iter().filter_map(|(name, src)| {
                src.as_str().map(|s| {
                    (
                        name.clone(),
                        ChatTemplate::labelled(s.to_string(), format!("{label} ({name:?})")),
                    )
                })
            }))),
            other => Err(format!(
                "`chat_template` must be a string or a list of named templates, found {other}"
            )),
        }
    }

    /// Whether there is no template.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The template names (`default` for a single template).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|(n, _)| n.as_str())
    }

    /// The template with this name.
    pub fn get(&self, name: &str) -> Option<&ChatTemplate> {
        self.templates
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// The template transformers would use: `requested` if it names one of several named
    /// templates, else `requested` itself as a template source; without `requested`, the
    /// single template, or of named ones `tool_use` when there are tools, else `default`.
    pub fn select(&self, requested: Option<&str>, has_tools: bool) -> Result<ChatTemplate> {
        if let Some(r) = requested {
            if !self.single {
                if let Some(t) = self.get(r) {
                    return Ok(t.clone());
                }
            }
            return Ok(ChatTemplate::new(r));
        }
        if self.templates.is_empty() {
            return Err(Error::Template {
                template: "chat template".into(),
                reason: "the tokenizer has no chat template (no chat_template.jinja, and no \
                         `chat_template` in tokenizer_config.json)"
                    .into(),
            });
        }
        if self.single {
            return Ok(self.templates[0].1.clone());
        }
        if has_tools {
            if let Some(t) = self.get("tool_use") {
                return Ok(t.clone());
            }
        }
        self.get("default").cloned().ok_or_else(|| Error::Template {
            template: "chat template".into(),
            reason: format!(
                "the model has several chat templates and none is named \"default\"; pick one \
                 by name: {}",
                self.names().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// Like [`render`](Self::render), with messages as JSON text (key order kept).
    pub fn render_json(
        &self,
        messages_json: &str,
        options: &ChatOptions,
        special: &SpecialTokens,
    ) -> Result<String> {
        self.select(options.template.as_deref(), options.has_tools())?
            .render_json(messages_json, options, special)
    }

    /// Renders with the template [`select`](Self::select)ed by `options`.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        options: &ChatOptions,
        special: &SpecialTokens,
    ) -> Result<String> {
        self.select(options.template.as_deref(), options.has_tools())?
            .render(messages, options, special)
    }
}

fn read_text_if_exists(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}
