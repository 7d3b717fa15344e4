import InterlockCore
import Testing

/// Default deny: grants by exact name, `*` and `<namespace>.*`, and token scopes on top.
@Suite struct GrantTests {
    @Test func grantsCoverExactNamesWildcardsAndNamespaces() {
        let grants = AgentGrants(models: ["fast"], tools: ["files.*", "search"], agents: ["*"])
        let cases: [(String, String, Bool)] = [
            ("model", "fast", true), ("model", "smart", false), ("model", "fast2", false),
            ("tool", "files.read", true), ("tool", "files.", false), ("tool", "files", false), ("tool", "filesystem.read", false),
            ("tool", "search", true), ("tool", "search.web", false),
            ("agent", "anyone", true), ("workflow", "w", false), ("event", "e", false), ("unknown", "fast", false),
        ]
        for (kind, name, expected) in cases {
            #expect(grants.covers(kind: kind, name: name) == expected, "\(kind):\(name)")
            #expect(grants.covers(scope: "\(kind):\(name)") == expected, "\(kind):\(name)")
        }
        #expect(!grants.covers(scope: "fast"))
    }

    @Test func aCallerNeedsTheGrantAndItsCredentialsScope() {
        var agent = Agent(id: "a")
        agent.grants = AgentGrants(models: ["fast", "smart"], tools: ["files.*"])
        let key = Caller(agent: agent, credential: .apiKey(id: "k"))
        #expect(key.permits(kind: "model", name: "smart"))
        #expect(!key.permits(kind: "model", name: "other"))
        let token = Caller(agent: agent, credential: .accessToken(id: "t"), scopes: ["model:fast", "tool:files.read"])
        #expect(token.permits(kind: "model", name: "fast"))
        #expect(!token.permits(kind: "model", name: "smart"))
        #expect(token.permits(kind: "tool", name: "files.read"))
        #expect(!token.permits(kind: "tool", name: "files.write"))
    }
}
