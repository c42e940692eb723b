//! A base image's `OnBuild` triggers, run first in a stage built on the image, as BuildKit runs them: each
//! trigger parsed as its own one-instruction Dockerfile, then lowered in the stage's scope.

use super::{InstructionKind, Located, Lowerer, Result, SourceFile, Span, Stage, is_step};
use crate::diag::Diagnostic;
use crate::frontend::dockerfile::syntax::ast::Dockerfile;

impl Lowerer<'_> {
    /// Runs the triggers of the stage's base image (`from` is where the FROM names it). Each trigger
    /// is parsed as `ONBUILD <trigger>`, so the parser's rules for triggers (no `ONBUILD`, `FROM` or
    /// `MAINTAINER`) apply with BuildKit's messages, and an error points into the trigger's text, in a
    /// source named after the image and the trigger's place in its config.
    pub(super) fn base_image_triggers(&mut self, stage: &mut Stage, from: Span) -> Result<()> {
        let Some((reference, triggers)) = stage.base_triggers.take() else {
            return Ok(());
        };
        let at_from = Located::new(self.file(), from);
        let note = format!("`{reference}` has ONBUILD triggers, which run here");
        let mut parsed = Vec::with_capacity(triggers.len());
        for (i, trigger) in triggers.iter().enumerate() {
            let file = SourceFile::new(
                format!("{reference} OnBuild[{i}]"),
                format!("ONBUILD {trigger}"),
            );
            let df = parse_trigger(&file).map_err(|d| d.label(at_from.clone(), note.clone()))?;
            parsed.push(df);
        }
        stage.steps += parsed
            .iter()
            .filter(|df| trigger_of(df).is_some_and(is_step))
            .count();
        for df in &parsed {
            let Some(ins) = trigger_of(df) else {
                continue;
            };
            let outer = std::mem::replace(&mut self.source, (df.file.clone(), df.escape));
            let done = self.instruction(stage, ins);
            self.source = outer;
            done.map_err(|d| d.label(at_from.clone(), note.clone()))?;
        }
        Ok(())
    }
}

/// One trigger's text as a Dockerfile of exactly one `ONBUILD` instruction.
fn parse_trigger(file: &std::sync::Arc<SourceFile>) -> Result<Dockerfile> {
    let df = crate::frontend::dockerfile::syntax::parse(file.clone())?;
    if df.instructions.len() != 1 {
        // BuildKit's words: a trigger is one instruction, never several lines of them.
        return Err(Diagnostic::at(
            file,
            Span::new(0, file.text.len()),
            "onbuild trigger should be a single expression",
        )
        .help("the base image's config holds a malformed ONBUILD trigger; rebuild that image"));
    }
    Ok(df)
}

fn trigger_of(df: &Dockerfile) -> Option<&super::Instruction> {
    df.instructions.iter().find_map(|i| match &i.kind {
        InstructionKind::Onbuild(t) => Some(&**t),
        _ => None,
    })
}
