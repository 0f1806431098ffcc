//! [`xmp_packet`]: a minimal XMP packet naming the IPTC digital source type, the rights
//! statement and the job.

/// A minimal XMP packet (Adobe XMP specification part 1, RDF/XML) with:
/// - `Iptc4xmpExt:DigitalSourceType` = `digital_source_type` (an IPTC NewsCodes URI),
/// - `dc:rights` and `xmpRights:UsageTerms` (language alternatives, `x-default`) = `rights`,
/// - `dc:identifier` = `job_id`.
///
/// Values are XML-escaped. The packet is read-only (`<?xpacket end="r"?>`, no padding), which
/// suits a file that is written once.
pub fn xmp_packet(job_id: &str, digital_source_type: &str, rights: &str) -> String {
    let job_id = escape(job_id);
    let source = escape(digital_source_type);
    let rights = escape(rights);
    format!(
        r#"<?xpacket begin="{bom}" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/"
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    Iptc4xmpExt:DigitalSourceType="{source}"
    dc:identifier="{job_id}">
   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">{rights}</rdf:li></rdf:Alt></dc:rights>
   <xmpRights:UsageTerms><rdf:Alt><rdf:li xml:lang="x-default">{rights}</rdf:li></rdf:Alt></xmpRights:UsageTerms>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>"#,
        bom = '\u{feff}'
    )
}

/// Escapes the five XML special characters.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_names_source_rights_and_job() {
        let packet = xmp_packet(
            "0000-job",
            crate::DIGITAL_SOURCE_TYPE_TRAINED,
            "CreativeML OpenRAIL-M <see> \"A\" & 'B'",
        );
        assert!(packet.starts_with("<?xpacket begin=\"\u{feff}\""));
        assert!(packet.ends_with("<?xpacket end=\"r\"?>"));
        assert!(packet.contains(&format!(
            "Iptc4xmpExt:DigitalSourceType=\"{}\"",
            crate::DIGITAL_SOURCE_TYPE_TRAINED
        )));
        assert!(packet.contains("dc:identifier=\"0000-job\""));
        assert!(packet.contains(
            "CreativeML OpenRAIL-M &lt;see&gt; &quot;A&quot; &amp; &apos;B&apos;</rdf:li>"
        ));
        assert!(!packet.contains("<see>"));
    }
}
