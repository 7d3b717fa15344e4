/// A secret value (API key, token). It never prints: `description`, `debugDescription`
/// and string interpolation show `<redacted>`, so it cannot leak into logs or errors by accident.
public struct Secret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    private let value: String

    public init(_ value: String) { self.value = value }

    /// The secret itself, for the one place that must send it (an upstream header).
    public func reveal() -> String { value }

    public var isEmpty: Bool { value.isEmpty }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
}
