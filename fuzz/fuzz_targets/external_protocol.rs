//! The external-stage protocol (`inpaint-stage.v1`): a stage's reply bytes, as the HTTP and the
//! exec stage hand them to `protocol::decode_response`, never panic; an accepted reply keeps
//! the output's size in a replacement image and carries no prompt text into what is audited.
//!
//! The first byte chooses the call: even, before inference (no output to compare a replacement
//! with); odd, after output with an image of 1 to 8 pixels a side, so that a small PNG in the
//! corpus can match it. The rest is the reply.
#![no_main]

use inpaint_external_stages::protocol::decode_response;
use inpaint_plugin_api::{Change, JobContext, Verdict};
use libfuzzer_sys::fuzz_target;

/// Long enough (8 characters or more) for the leak check to look for it.
const PROMPT: &str = "a red bicycle";

fn no_prompt(text: &str) {
    assert!(!text.contains(PROMPT), "prompt text accepted: {text:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, reply)) = data.split_first() else {
        return;
    };
    let image_size = (selector & 1 == 1).then(|| {
        let side = |bits: u8| u32::from(bits & 7) + 1;
        (side(selector >> 1), side(selector >> 4))
    });
    let ctx = JobContext::new(uuid::Uuid::nil(), PROMPT);
    let Ok(verdict) = decode_response(reply, 7, &ctx, image_size) else {
        return;
    };
    match verdict {
        Verdict::Continue => {}
        Verdict::Block(block) => {
            no_prompt(&block.category);
            no_prompt(&block.reason);
            block.rules.iter().for_each(|r| no_prompt(r));
            block.scores.keys().for_each(|k| no_prompt(k));
            assert!(block.scores.values().all(|v| v.is_finite()));
        }
        Verdict::Modify(changes) => {
            assert!(!changes.is_empty());
            for modification in changes {
                modification.category.iter().for_each(|c| no_prompt(c));
                modification.rules.iter().for_each(|r| no_prompt(r));
                match &modification.change {
                    Change::ReplaceImage(image) => match image_size {
                        Some(size) => assert_eq!(image.dimensions(), size),
                        None => assert!(image.width() <= 8192 && image.height() <= 8192),
                    },
                    Change::AddMetadata { key, value } => {
                        no_prompt(key);
                        no_prompt(value);
                    }
                    Change::AddScores(scores) => {
                        scores.keys().for_each(|k| no_prompt(k));
                        assert!(scores.values().all(|v| v.is_finite()));
                    }
                    _ => {}
                }
            }
        }
    }
});
