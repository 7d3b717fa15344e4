/// Interlock's version: printed by `interlock version`, sent as MCP `serverInfo.version`.
public enum InterlockVersion {
    public static let current = "0.1.0"
}
