import InterlockCore

/// Removes credentials from text that came from an upstream before it reaches an agent or a log.
enum SecretRedaction {
    static func redact(_ text: String, secrets: [Secret?]) -> String {
        var result = text
        for secret in secrets.compactMap({ $0 }) where secret.reveal().count >= 6 {
            result = result.replacing(secret.reveal(), with: "[redacted]")
        }
        // Provider-style keys (sk-..., sk-ant-...) even when they are not ours.
        var output = ""
        var words = result.split(separator: " ", omittingEmptySubsequences: false).makeIterator()
        var first = true
        while let word = words.next() {
            if !first { output += " " }
            first = false
            if word.hasPrefix("sk-") || word.hasPrefix("\"sk-") || word.hasPrefix("'sk-") {
                output += "[redacted]"
            } else {
                output += word
            }
        }
        return output
    }
}
