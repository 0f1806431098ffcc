//! [`xmp_packet`]: the XMP packet that carries an output's provenance in every format: the IPTC
//! digital source type, the rights statement, the job, the generating tool and model, and every
//! `provenance.*` field verbatim in this crate's own namespace ([`XMP_NAMESPACE`]).
//!
//! XMP is where the full field set lives for JPEG and WebP, whose EXIF block only carries a
//! summary (see [`exif`](crate::exif)); for PNG it repeats the `iTXt` fields so that XMP-only
//! readers see the same thing.

use crate::stage::{LICENCE, LICENCE_RESTRICTIONS, ProvenanceStage, creator_tool, field};

/// Namespace URI of the `inpaint:` properties (one per `provenance.*` metadata key, named like
/// the key without its prefix). A namespace URI is an identifier, not a link: it need not
/// resolve, and it must never change, or readers lose the properties.
pub const XMP_NAMESPACE: &str = "https://example.invalid/inpaint-worker/ns/provenance/1.0/";
/// The prefix bound to [`XMP_NAMESPACE`] in the packet.
pub const XMP_PREFIX: &str = "inpaint";

/// The XMP packet (Adobe XMP specification part 1, RDF/XML) for the provenance `fields` (as
/// [`png_fields`](crate::png_fields) returns them); `None` when they have no
/// `provenance.digital_source_type`, i.e. the provenance stage did not run. It holds:
/// - `Iptc4xmpExt:DigitalSourceType`: the IPTC NewsCodes URI, the machine-readable
///   "made by a trained model" marker;
/// - `dc:identifier`: the job id;
/// - `xmp:CreatorTool`: the worker, version and model ([`creator_tool`]);
/// - `Iptc4xmpExt:AISystemUsed` (IPTC Photo Metadata 2025.1): the model id, when configured;
/// - `dc:rights` and `xmpRights:UsageTerms` (`x-default`): the licence and where its use
///   restrictions are;
/// - `inpaint:<name>` for every `provenance.<name>` field, value verbatim (the prompt only when
///   the stage was configured to record it).
///
/// Values are XML-escaped; characters XML 1.0 cannot carry become U+FFFD. The packet is
/// read-only (`<?xpacket end="r"?>`, no padding), which suits a file written once.
pub fn xmp_packet(fields: &[(String, String)]) -> Option<String> {
    let source = field(fields, "digital_source_type")?;
    let job_id = field(fields, "job_id").unwrap_or_default();
    let rights = escape(&format!("{LICENCE}. {LICENCE_RESTRICTIONS}."));
    let mut attributes = format!(
        "    Iptc4xmpExt:DigitalSourceType=\"{}\"\n    dc:identifier=\"{}\"\n    xmp:CreatorTool=\"{}\"",
        escape(source),
        escape(job_id),
        escape(&creator_tool(fields)),
    );
    if let Some(model) = field(fields, "model_id") {
        attributes.push_str(&format!(
            "\n    Iptc4xmpExt:AISystemUsed=\"{}\"",
            escape(model)
        ));
    }
    let mut properties = String::new();
    for (key, value) in fields {
        let Some(name) = key
            .strip_prefix(ProvenanceStage::KEY_PREFIX)
            .and_then(xml_name)
        else {
            continue;
        };
        properties.push_str(&format!(
            "   <{XMP_PREFIX}:{name}>{}</{XMP_PREFIX}:{name}>\n",
            escape(value)
        ));
    }
    Some(format!(
        r#"<?xpacket begin="{bom}" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/"
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:{XMP_PREFIX}="{XMP_NAMESPACE}"
{attributes}>
   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">{rights}</rdf:li></rdf:Alt></dc:rights>
   <xmpRights:UsageTerms><rdf:Alt><rdf:li xml:lang="x-default">{rights}</rdf:li></rdf:Alt></xmpRights:UsageTerms>
{properties}  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>"#,
        bom = '\u{feff}'
    ))
}

/// `name` if it is an XML name an RDF property can use (ASCII letters, digits, `_`, `-`, `.`, not
/// starting with a digit, `-` or `.`); the stage's keys all are.
fn xml_name(name: &str) -> Option<&str> {
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    valid.then_some(name)
}

/// Escapes the five XML special characters and tab, line feed and carriage return (which
/// attribute-value normalisation would otherwise turn into spaces, and element content into
/// line feeds); replaces characters XML 1.0 forbids even as references with U+FFFD.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut fields = vec![
            (
                "provenance.digital_source_type".to_owned(),
                crate::DIGITAL_SOURCE_TYPE_TRAINED.to_owned(),
            ),
            ("provenance.job_id".to_owned(), "0000-job".to_owned()),
        ];
        fields.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        fields
    }

    #[test]
    fn packet_names_source_rights_job_and_every_field() {
        let packet = xmp_packet(&fields(&[
            ("provenance.seed", "1234"),
            ("provenance.model_id", "sd <inpainting> \"A\" & 'B'"),
            ("provenance.prompt", "line one\nline two\r\tend \u{1} ✓"),
        ]))
        .expect("provenance ran");
        assert!(packet.starts_with("<?xpacket begin=\"\u{feff}\""));
        assert!(packet.ends_with("<?xpacket end=\"r\"?>"));
        assert!(packet.contains(&format!(
            "Iptc4xmpExt:DigitalSourceType=\"{}\"",
            crate::DIGITAL_SOURCE_TYPE_TRAINED
        )));
        assert!(packet.contains("dc:identifier=\"0000-job\""));
        assert!(packet.contains(&format!("xmlns:inpaint=\"{XMP_NAMESPACE}\"")));
        assert!(packet.contains("<inpaint:seed>1234</inpaint:seed>"));
        assert!(packet.contains("<inpaint:job_id>0000-job</inpaint:job_id>"));
        let model = "sd &lt;inpainting&gt; &quot;A&quot; &amp; &apos;B&apos;";
        assert!(packet.contains(&format!("Iptc4xmpExt:AISystemUsed=\"{model}\"")));
        assert!(packet.contains(&format!("<inpaint:model_id>{model}</inpaint:model_id>")));
        assert!(packet.contains(&format!(
            "CreatorTool=\"inpaint-worker {}",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(packet.contains(
            "<inpaint:prompt>line one&#xA;line two&#xD;&#x9;end \u{fffd} ✓</inpaint:prompt>"
        ));
        assert!(packet.contains("Attachment A of the CreativeML OpenRAIL-M licence"));
        assert!(!packet.contains("<inpainting>"));
    }

    #[test]
    fn no_source_type_no_packet_and_no_model_no_ai_system() {
        assert_eq!(xmp_packet(&[]), None);
        assert_eq!(
            xmp_packet(&[("provenance.job_id".into(), "j".into())]),
            None
        );
        let packet = xmp_packet(&fields(&[])).expect("packet");
        assert!(!packet.contains("AISystemUsed"));
    }

    #[test]
    fn odd_keys_are_left_out_of_the_namespace() {
        let packet = xmp_packet(&fields(&[
            ("provenance.9lives", "x"),
            ("provenance.a b", "x"),
            ("provenance.", "x"),
            ("other.key", "x"),
            ("provenance.ok-name.v2", "y"),
        ]))
        .expect("packet");
        assert!(!packet.contains(">x<"));
        assert!(packet.contains("<inpaint:ok-name.v2>y</inpaint:ok-name.v2>"));
    }
}
