import FoundationEssentials
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
import InterlockRuntime
import InterlockServer
import JWTKit
import NIOCore
import Synchronization
import Testing

/// An identity provider played by the test: an ES256 key, its JWKS, and the tokens it signs.
struct TestIdentityProvider {
    let issuer: String
    let key = ES256PrivateKey()
    let kid: String

    init(issuer: String = "https://idp.test", kid: String = "idp-key-1") {
        self.issuer = issuer
        self.kid = kid
    }

    var jwks: String {
        let parameters = key.publicKey.parameters!
        return JSONWriter.string(["keys": [["kty": "EC", "crv": "P-256", "alg": "ES256", "kid": .string(kid), "x": .string(parameters.x), "y": .string(parameters.y)]]])
    }

    /// Writes the JWKS to a fresh file; its path.
    func jwksFile() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("idp-\(UInt32.random(in: 0...UInt32.max)).json").path
        try Data(jwks.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    func token(_ claims: JSONObject, lifetimeSeconds: Int64 = 600) async throws -> String {
        let now = Int64(Date().timeIntervalSince1970)
        var all: JSONObject = ["iss": .string(issuer), "aud": "interlock", "iat": .integer(now), "exp": .integer(now + lifetimeSeconds)]
        for (name, value) in claims { all[name] = value }
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: key, kid: JWKIdentifier(string: kid))
        return try await keys.sign(TestClaims(value: .object(all)), kid: JWKIdentifier(string: kid))
    }
}

/// Claims written as given.
struct TestClaims: JWTPayload {
    let value: JSONValue

    init(value: JSONValue) { self.value = value }
    init(from decoder: any Decoder) throws { throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "sign only")) }

    func encode(to encoder: any Encoder) throws {
        // Flat claims only: what an IdP puts in a user's token here.
        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
        var container = encoder.container(keyedBy: Key.self)
        for (name, member) in value.objectValue ?? [:] {
            switch member {
            case .string(let text): try container.encode(text, forKey: Key(stringValue: name))
            case .integer(let number): try container.encode(number, forKey: Key(stringValue: name))
            case .object(let object):
                var nested = container.nestedContainer(keyedBy: Key.self, forKey: Key(stringValue: name))
                for (inner, innerValue) in object { try nested.encode(innerValue.stringValue ?? "", forKey: Key(stringValue: inner)) }
            default: continue
            }
        }
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

@Suite struct ClaimMappingTests {
    @Test func subjectsMapToUsersOrAgents() {
        var users = TrustedIssuerSettings(issuer: "https://idp", keys: .file(path: "x"), audience: "interlock")
        users.subjectClaim = "email"
        #expect(users.subject(of: ["email": "ada@example.com", "sub": "123"]) == .success(.user("ada@example.com")))
        #expect(users.subject(of: ["sub": "123"]) == .failure(.missingClaim("email")))
        #expect(users.subject(of: ["email": 5]) == .failure(.wrongType("email")))

        var agents = TrustedIssuerSettings(issuer: "https://mesh", keys: .file(path: "x"), audience: "interlock")
        agents.subjectKind = .agent
        agents.agentPrefix = "spiffe://corp/agent/"
        agents.scopeClaim = "scp"
        #expect(agents.subject(of: ["sub": "spiffe://corp/agent/billing"]) == .success(.agent("billing")))
        #expect(agents.subject(of: ["sub": "spiffe://other/agent/billing"]) == .failure(.notAnAgent("spiffe://other/agent/billing", prefix: "spiffe://corp/agent/")))
        #expect(agents.subject(of: ["sub": "spiffe://corp/agent/has space"]) == .failure(.notAnAgent("spiffe://corp/agent/has space", prefix: "spiffe://corp/agent/")))
        #expect(agents.scopes(of: ["scp": ["model:fast", "tool:x"]]) == ["model:fast", "tool:x"])
        #expect(agents.scopes(of: ["scp": "model:fast tool:x"]) == ["model:fast", "tool:x"])
        #expect(users.scopes(of: ["scope": "openid email"]) == nil)
    }
}

@Suite struct TokenExchangeTests {
    static let exchange = "urn:ietf:params:oauth:grant-type:token-exchange"
    static let accessToken = "urn:ietf:params:oauth:token-type:access_token"

    func config(idp: TestIdentityProvider, meshJWKS: String) throws -> String {
        """
        providers:
          mock: { type: mock }
        models:
          fast: { deployments: [{ provider: mock, model: m }] }
          other: { deployments: [{ provider: mock, model: o }] }
        auth:
          exchange_audiences: ["https://tools.example.com"]
          trusted_issuers:
            - { issuer: "\(idp.issuer)", jwks_file: "\(try idp.jwksFile())", subject: user, subject_claim: email, algorithms: [ES256] }
            - { issuer: "https://mesh.test", jwks_file: "\(meshJWKS)", subject: agent, agent_prefix: "spiffe://mesh/agent/", scope_claim: scp }
        agents:
          - { id: a, api_key: test-key-aaaaaaaaaaaa, models: [fast, other], agents: [b] }
          - { id: b, api_key: test-key-bbbbbbbbbbbb, models: [fast] }
          - { id: c, api_key: test-key-cccccccccccc, models: [fast] }
        """
    }

    func form(_ fields: [(String, String)]) -> (HTTPFields, ByteBuffer) {
        let body = fields.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0.1)" }.joined(separator: "&")
        return ([.contentType: "application/x-www-form-urlencoded"], ByteBuffer(string: body))
    }

    func json(_ response: TestResponse) throws -> JSONValue { try JSONParser.parse(Array(response.body.readableBytesView)) }

    @Test func aUserTokenAndAnAgentTokenGiveADelegatedToken() async throws {
        let idp = TestIdentityProvider()
        let mesh = TestIdentityProvider(issuer: "https://mesh.test", kid: "mesh-1")
        let harness = try await Harness.make(try config(idp: idp, meshJWKS: try mesh.jwksFile()))
        let app = Application(router: harness.router)
        let services = harness.services
        try await app.test(.router) { client in
            func agentToken(_ id: String, _ secret: String) async throws -> String {
                let (headers, body) = form([("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)])
                return try await client.execute(uri: "/oauth/token", method: .post, headers: headers, body: body) { try json($0)["access_token"]?.stringValue ?? "" }
            }
            func exchange(_ fields: [(String, String)]) async throws -> (HTTPResponse.Status, JSONValue) {
                let (headers, body) = form(fields)
                return try await client.execute(uri: "/oauth/token", method: .post, headers: headers, body: body) { ($0.status, try json($0)) }
            }
            let user = try await idp.token(["email": "ada@example.com", "sub": "u-1"])
            let tokenA = try await agentToken("a", "test-key-aaaaaaaaaaaa")
            let tokenB = try await agentToken("b", "test-key-bbbbbbbbbbbb")
            let tokenC = try await agentToken("c", "test-key-cccccccccccc")

            // A user's token alone opens nothing.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(user), body: chat()) { response in
                #expect(response.status == .unauthorized)
                #expect(response.headers[.wwwAuthenticate]?.contains("RFC 8693") == true)
            }
            let base = [("grant_type", Self.exchange), ("subject_token", user), ("subject_token_type", Self.accessToken)]
            let (status, answer) = try await exchange(base + [("actor_token", tokenA), ("actor_token_type", Self.accessToken)])
            #expect(status == .ok)
            #expect(answer["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token" && answer["token_type"] == "Bearer")
            let delegated = answer["access_token"]?.stringValue ?? ""
            let claims = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(delegated, 1))
            #expect(claims["sub"] == "ada@example.com")
            #expect(claims["act"] == ["sub": "spiffe://interlock.local/agent/a"])
            #expect(claims["scope"] == "model:fast model:other agent:b")

            // The delegated token calls as agent a, for the user; the audit log says both.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(delegated), body: chat()) { response in
                #expect(response.status == .ok)
            }
            await services.gateway.governor.audit?.writer.flush()
            let records = try await services.store.auditRecords(afterPosition: 0, limit: 1_000).records
            let call = records.last { $0.action == "model.call" && $0.decision == "allow" }
            #expect(call?.agentID == "a" && call?.userID == "ada@example.com" && call?.actorChain == ["spiffe://interlock.local/agent/a"])
            #expect(records.contains { $0.action == "token.exchange" && $0.decision == "allow" && $0.userID == "ada@example.com" })

            // Onward: a may call b, so b may act for the user after a; the chain nests.
            let (onwardStatus, onward) = try await exchange([
                ("grant_type", Self.exchange), ("subject_token", delegated), ("subject_token_type", Self.accessToken),
                ("actor_token", tokenB), ("actor_token_type", Self.accessToken),
            ])
            #expect(onwardStatus == .ok)
            let nested = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(onward["access_token"]?.stringValue ?? "", 1))
            #expect(nested["act"]?["sub"] == "spiffe://interlock.local/agent/b" && nested["act"]?["act"]?["sub"] == "spiffe://interlock.local/agent/a")
            #expect(nested["act"]?["act"]?["act"] == nil)
            #expect(nested["scope"] == "model:fast")
            // … but a may not hand the user to c.
            let (refusedStatus, refused) = try await exchange([
                ("grant_type", Self.exchange), ("subject_token", delegated), ("subject_token_type", Self.accessToken),
                ("actor_token", tokenC), ("actor_token_type", Self.accessToken),
            ])
            #expect(refusedStatus == .badRequest && refused["error"] == "invalid_request")

            // Bad requests, each with its RFC error.
            let cases: [([(String, String)], String, String)] = [
                (base, "invalid_request", "actor_token"),
                (base + [("actor_token", "not-a-token"), ("actor_token_type", Self.accessToken)], "invalid_request", "actor token is not valid"),
                (base + [("actor_token", user), ("actor_token_type", Self.accessToken)], "invalid_request", "actor token"),
                (base + [("actor_token", tokenA), ("actor_token_type", Self.accessToken), ("scope", "model:fast tool:shell")], "invalid_scope", "tool:shell"),
                (base + [("actor_token", tokenB), ("actor_token_type", Self.accessToken), ("scope", "model:other")], "invalid_scope", "model:other"),
                (base + [("actor_token", tokenA), ("actor_token_type", Self.accessToken), ("audience", "https://evil.example.com")], "invalid_target", "evil"),
                ([("grant_type", Self.exchange), ("subject_token_type", Self.accessToken), ("actor_token", tokenA), ("actor_token_type", Self.accessToken)], "invalid_request", "subject_token"),
                (base + [("actor_token", tokenA)], "invalid_request", "actor_token_type"),
            ]
            for (fields, error, mention) in cases {
                let (status, answer) = try await exchange(fields)
                #expect(status == .badRequest, "\(mention)")
                #expect(answer["error"]?.stringValue == error, "\(mention)")
                #expect(answer["error_description"]?.stringValue?.contains(mention) == true, "\(answer)")
            }

            // An agent's own token as the subject: only an agent it is granted may act for it.
            let (agentSubjectStatus, agentSubject) = try await exchange([
                ("grant_type", Self.exchange), ("subject_token", tokenA), ("subject_token_type", Self.accessToken),
                ("actor_token", tokenB), ("actor_token_type", Self.accessToken),
            ])
            #expect(agentSubjectStatus == .ok)
            let forA = agentSubject["access_token"]?.stringValue ?? ""
            let (reverseStatus, reverse) = try await exchange([
                ("grant_type", Self.exchange), ("subject_token", tokenB), ("subject_token_type", Self.accessToken),
                ("actor_token", tokenA), ("actor_token_type", Self.accessToken),
            ])
            #expect(reverseStatus == .badRequest && reverse["error_description"]?.stringValue?.contains("may not delegate") == true)

            // A user issuer cannot name Interlock's agents as actors: its `act` claim is ignored,
            // so its token is still only a user's and opens nothing by itself.
            let spoofed = try await idp.token(["email": "mallory@example.com", "act": ["sub": "spiffe://interlock.local/agent/a"]])
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(spoofed), body: chat()) { response in
                #expect(response.status == .unauthorized)
            }

            // may_act names who may act for the user: someone else is refused.
            let pinned = try await idp.token(["email": "bob@example.com", "may_act": ["sub": "spiffe://interlock.local/agent/b"]])
            let (pinnedStatus, pinnedAnswer) = try await exchange([
                ("grant_type", Self.exchange), ("subject_token", pinned), ("subject_token_type", Self.accessToken),
                ("actor_token", tokenA), ("actor_token_type", Self.accessToken),
            ])
            #expect(pinnedStatus == .badRequest && pinnedAnswer["error_description"]?.stringValue?.contains("allows only") == true)
            let (allowedStatus, _) = try await exchange([
                ("grant_type", Self.exchange), ("subject_token", pinned), ("subject_token_type", Self.accessToken),
                ("actor_token", tokenB), ("actor_token_type", Self.accessToken),
            ])
            #expect(allowedStatus == .ok)
            // A may_act Interlock cannot check refuses the token instead of being ignored.
            let vague = try await idp.token(["email": "carol@example.com", "may_act": ["client_id": "b"]])
            let (vagueStatus, vagueAnswer) = try await exchange([
                ("grant_type", Self.exchange), ("subject_token", vague), ("subject_token_type", Self.accessToken),
                ("actor_token", tokenA), ("actor_token_type", Self.accessToken),
            ])
            #expect(vagueStatus == .badRequest && vagueAnswer["error_description"]?.stringValue?.contains("may_act") == true)

            // A token for another audience is not valid here.
            let (toolStatus, toolAnswer) = try await exchange(base + [
                ("actor_token", tokenA), ("actor_token_type", Self.accessToken), ("audience", "https://tools.example.com"),
            ])
            #expect(toolStatus == .ok)
            let toolToken = toolAnswer["access_token"]?.stringValue ?? ""
            #expect(try JSONParser.parse(TokenServiceTestSupport.decodeSegment(toolToken, 1))["aud"] == ["https://tools.example.com"])
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(toolToken), body: chat()) { response in
                #expect(response.status == .unauthorized)
            }

            // An external issuer's agent token is that agent's credential, with its scopes.
            let meshToken = try await mesh.token(["sub": "spiffe://mesh/agent/a", "scp": "model:other"])
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(meshToken), body: chat("other")) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(meshToken), body: chat("fast")) { response in
                #expect(response.status == .forbidden)
            }
            // Its tokens signed with another key, or the user issuer's with the wrong algorithm, are refused.
            let impostor = try await TestIdentityProvider(issuer: "https://mesh.test", kid: "mesh-1").token(["sub": "spiffe://mesh/agent/a"])
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(impostor), body: chat("other")) { response in
                #expect(response.status == .unauthorized)
                #expect(response.headers[.wwwAuthenticate]?.contains("signature") == true)
            }

            // Disabling the agent b acts for ends that delegation at once.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(forA), body: chat()) { response in
                #expect(response.status == .ok)
            }
            _ = try await services.gateway.governor.registry.setDisabled(id: "a", true, reason: "test", nowMs: services.gateway.governor.nowMs())
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(forA), body: chat()) { response in
                #expect(response.status == .unauthorized)
                #expect(response.headers[.wwwAuthenticate]?.contains("Agent 'a' is disabled") == true)
            }
        }
        try await harness.close()
    }
}

/// A trusted issuer found through OpenID discovery, rotating its key.
@Suite struct DiscoveredIssuerTests {
    final class RotatingIdP: Sendable {
        let first = TestIdentityProvider(kid: "k1")
        let second = TestIdentityProvider(kid: "k2")
        let rotated = Mutex(false)

        func router(port: @escaping @Sendable () -> Int) -> Router<BasicRequestContext> {
            let router = Router()
            router.get("/.well-known/openid-configuration") { _, _ in
                Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: JSONWriter.string([
                    "issuer": "https://idp.test", "jwks_uri": .string("http://127.0.0.1:\(port())/jwks"),
                ]))))
            }
            router.get("/jwks") { _, _ in
                let jwks = self.rotated.withLock { $0 } ? self.second.jwks : self.first.jwks
                return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: jwks)))
            }
            return router
        }
    }

    @Test func keysAreFetchedThroughDiscoveryAndAgainAfterARotation() async throws {
        let idp = RotatingIdP()
        let port = Mutex(0)
        let upstream = Application(router: idp.router { port.withLock { $0 } }, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await upstream.test(.live) { idpClient in
            port.withLock { $0 = idpClient.port! }
            let harness = try await Harness.make("""
                providers:
                  mock: { type: mock }
                models:
                  fast: { deployments: [{ provider: mock, model: m }] }
                auth:
                  jwks_refresh_min_interval_s: 1
                  trusted_issuers:
                    - { issuer: "https://idp.test", discovery_url: "http://127.0.0.1:\(idpClient.port!)/.well-known/openid-configuration", subject: agent, algorithms: [ES256] }
                agents:
                  - { id: a, models: [fast] }
                """)
            let app = Application(router: harness.router)
            try await app.test(.router) { client in
                let before = try await idp.first.token(["sub": "a"])
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(before), body: chat()) { response in
                    #expect(response.status == .ok)
                }
                idp.rotated.withLock { $0 = true }
                let after = try await idp.second.token(["sub": "a"])
                // The new key is fetched once the refresh interval allows.
                try await Task.sleep(for: .milliseconds(1_100))
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(after), body: chat()) { response in
                    #expect(response.status == .ok)
                }
            }
            try await harness.close()
        }
    }
}
