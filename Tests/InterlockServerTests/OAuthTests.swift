import AsyncHTTPClient
import FoundationEssentials
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
import InterlockRuntime
import InterlockServer
import InterlockStore
import NIOCore
import Testing

@Suite struct OAuthTests {
    func tokenRequest(_ body: String, headers: HTTPFields = [:]) -> (HTTPFields, ByteBuffer) {
        var fields: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]
        for field in headers { fields.append(field) }
        return (fields, ByteBuffer(string: body))
    }

    func json(_ response: TestResponse) throws -> JSONValue {
        try JSONParser.parse(Array(response.body.readableBytesView))
    }

    @Test func clientCredentialsGiveATokenThatOpensTheGateway() async throws {
        let harness = try await Harness.make(baseConfig)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            var issued = ""
            let (headers, body) = tokenRequest("grant_type=client_credentials&client_id=a&client_secret=test-key-aaaaaaaaaaaa")
            try await client.execute(uri: "/oauth/token", method: .post, headers: headers, body: body) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.cacheControl] == "no-store")
                let token = try json(response)
                #expect(token["token_type"] == "Bearer" && token["expires_in"] == 900 && token["scope"] == "model:fast")
                issued = token["access_token"]?.stringValue ?? ""
            }
            // The token works wherever an API key does, for the same agent.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(issued), body: chat()) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(issued), body: chat("other")) { response in
                #expect(response.status == .forbidden)
            }
            // HTTP Basic client authentication (RFC 6749 §2.3.1).
            let basic = Data("a:test-key-aaaaaaaaaaaa".utf8).base64EncodedString()
            let (basicHeaders, basicBody) = tokenRequest("grant_type=client_credentials", headers: [.authorization: "Basic \(basic)"])
            try await client.execute(uri: "/oauth/token", method: .post, headers: basicHeaders, body: basicBody) { response in
                #expect(response.status == .ok)
            }
            // Discovery and keys.
            try await client.execute(uri: "/.well-known/jwks.json", method: .get) { response in
                let keys = try json(response)["keys"]?.arrayValue ?? []
                #expect(keys.count == 1)
                #expect(keys.first?["kty"] == "EC" && keys.first?["crv"] == "P-256" && keys.first?["alg"] == "ES256")
                #expect(keys.first?["d"] == nil)
                let header = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(issued, 0))
                #expect(header["kid"] == keys.first?["kid"])
            }
            try await client.execute(uri: "/.well-known/openid-configuration", method: .get) { response in
                let document = try json(response)
                #expect(document["issuer"] == "interlock")
                #expect(document["jwks_uri"]?.stringValue?.hasSuffix("/.well-known/jwks.json") == true)
                #expect(document["grant_types_supported"] == ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"])
            }
            let claims = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(issued, 1))
            #expect(claims["sub"] == "spiffe://interlock.local/agent/a")
            #expect(claims["iss"] == "interlock")
            #expect(claims["aud"] == "interlock" || claims["aud"] == ["interlock"])
            #expect(claims["jti"]?.stringValue?.isEmpty == false)
        }
        try await harness.close()
    }

    @Test func tokenRequestErrorsFollowRFC6749() async throws {
        let harness = try await Harness.make(baseConfig)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            let cases: [(String, HTTPResponse.Status, String)] = [
                ("grant_type=client_credentials&client_id=a&client_secret=wrong-secret-000000", .unauthorized, "invalid_client"),
                ("grant_type=client_credentials&client_id=poor&client_secret=test-key-aaaaaaaaaaaa", .unauthorized, "invalid_client"),
                ("grant_type=client_credentials", .unauthorized, "invalid_client"),
                ("grant_type=password&username=a&password=b", .badRequest, "unsupported_grant_type"),
                ("client_id=a&client_secret=test-key-aaaaaaaaaaaa", .badRequest, "invalid_request"),
                ("grant_type=client_credentials&grant_type=client_credentials", .badRequest, "invalid_request"),
                ("grant_type=client_credentials&client_id=a&client_secret=test-key-aaaaaaaaaaaa&scope=model%3Afast+model%3Aother", .badRequest, "invalid_scope"),
            ]
            for (body, status, error) in cases {
                let (headers, buffer) = tokenRequest(body)
                try await client.execute(uri: "/oauth/token", method: .post, headers: headers, body: buffer) { response in
                    #expect(response.status == status, "\(body)")
                    let answer = try json(response)
                    #expect(answer["error"]?.stringValue == error, "\(body)")
                    #expect(answer["error_description"]?.stringValue?.isEmpty == false)
                }
            }
            try await client.execute(uri: "/oauth/token", method: .post, headers: [.contentType: "application/json"], body: ByteBuffer(string: "{}")) { response in
                #expect(response.status == .badRequest)
                let answer = try json(response)
                #expect(answer["error"] == "invalid_request")
            }
        }
        try await harness.close()
    }

    @Test func badTokensAreRefusedWithAPreciseReason() async throws {
        let harness = try await Harness.make(baseConfig)
        let tokens = try #require(harness.services.gateway.governor.tokens)
        let agent = try #require(harness.services.gateway.governor.registry.entry(id: "a")?.agent)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let good = try await tokens.issue(for: agent, scopes: ["model:fast"], nowMs: now)
        let expired = try await tokens.issue(for: agent, scopes: [], nowMs: now - 3_600_000)
        var otherAudience = AuthSettings()
        otherAudience.audience = "someone-else"
        let foreign = try await TokenService.open(store: harness.services.store, settings: otherAudience, nowMs: now)
            .issue(for: agent, scopes: [], nowMs: now)
        var otherIssuer = AuthSettings()
        otherIssuer.issuer = "https://someone-else.example.com"
        let wrongIssuer = try await TokenService.open(store: harness.services.store, settings: otherIssuer, nowMs: now)
            .issue(for: agent, scopes: [], nowMs: now)
        let notYet = try await tokens.issue(for: agent, scopes: [], nowMs: now + 3_600_000)
        let parts = good.split(separator: ".").map(String.init)
        let payload = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(good, 1))
        var forged = payload.objectValue ?? [:]
        forged["sub"] = "spiffe://interlock.local/agent/poor"
        let tampered = [parts[0], TokenServiceTestSupport.encodeSegment(JSONWriter.bytes(.object(forged))), parts[2]].joined(separator: ".")
        let none = [TokenServiceTestSupport.encodeSegment(Array(#"{"alg":"none","typ":"JWT"}"#.utf8)), parts[1], ""].joined(separator: ".")
        let hs256 = [TokenServiceTestSupport.encodeSegment(Array(#"{"alg":"HS256","typ":"JWT","kid":"x"}"#.utf8)), parts[1], parts[2]].joined(separator: ".")
        var header = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(good, 0)).objectValue ?? [:]
        header["kid"] = "es256-unknown"
        let unknownKid = [TokenServiceTestSupport.encodeSegment(JSONWriter.bytes(.object(header))), parts[1], parts[2]].joined(separator: ".")
        let badSignature = parts[0] + "." + parts[1] + "." + String(parts[2].reversed())

        let cases: [(String, String)] = [
            (expired, "expired"), (foreign, "audience"), (wrongIssuer, "issuer 'https://someone-else.example.com'"), (notYet, "issued in the future"), (tampered, "signature"), (none, "'none' is not accepted"),
            (hs256, "'HS256' is not accepted"), (unknownKid, "not one of Interlock's signing keys"), (badSignature, "signature"),
            (TokenServiceTestSupport.encodeSegment(Array(#"{"alg":"#.utf8)) + ".e30.x", "malformed"),
            ("eyJ" + String(repeating: "A", count: 9_000) + ".e30.x", "Interlock reads at most 8192"),
            (String(repeating: "k", count: 9_000), "Interlock reads at most 8192"),
        ]
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            for (token, reason) in cases {
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(token), body: chat()) { response in
                    #expect(response.status == .unauthorized, "\(reason)")
                    let challenge = response.headers[.wwwAuthenticate] ?? ""
                    #expect(challenge.contains(#"error="invalid_token""#), "\(reason)")
                    #expect(challenge.contains(reason), "\(reason): \(challenge)")
                }
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(good), body: chat()) { response in
                #expect(response.status == .ok)
            }
        }
        // A verified token is remembered until it expires (so calls with it need no second
        // signature check and can take the event-loop path), and not a moment longer.
        #expect(tokens.cachedToken(good, nowMs: now)?.subject == .agent("a"))
        #expect((try? harness.services.gateway.governor.authenticate(apiKey: good, audited: false))?.agent.id == "a")
        #expect(tokens.cachedToken(expired, nowMs: now) == nil)
        #expect(tokens.cachedToken(good, nowMs: now + Int64(tokens.settings.tokenTTLSeconds + tokens.settings.leewaySeconds) * 1000 + 1) == nil)
        // Refusals are audited; nothing was spent.
        await harness.services.gateway.governor.audit?.writer.flush()
        let refusals = try await harness.services.store.auditRecords(afterPosition: 0, limit: 100).records.filter { $0.action == "auth.failed" }
        #expect(refusals.count == cases.count)
        try await harness.close()
    }

    @Test func oversizedHeadersAreRefusedWithAReason() async throws {
        let harness = try await Harness.make(baseConfig + "\nserver: { max_header_bytes: 16384 }\n")
        try await harness.application().test(.live) { client in
            // Over the credential limit but within the header limit: 401 that says so.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(String(repeating: "k", count: 10_000)), body: chat()) { response in
                #expect(response.status == .unauthorized)
                #expect(response.headers[.wwwAuthenticate]?.contains("reads at most 8192") == true)
            }
            // Over the header limit: the parser stops; the client still gets a JSON reason.
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(client.port!)/v1/chat/completions")
            request.method = .POST
            request.headers.add(name: "authorization", value: "Bearer " + String(repeating: "k", count: 20_000))
            request.body = .bytes(chat())
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            #expect(response.status.code == 431)
            let body = try JSONParser.parse(Array(try await response.body.collect(upTo: 1 << 16).readableBytesView))
            #expect(body["error"]?["code"] == "request_headers_too_large")
            #expect(body["error"]?["message"]?.stringValue?.contains("16384") == true)
        }
        try await harness.close()
    }

    @Test func protectedResourceMetadataIsNamedInEveryChallenge() async throws {
        let harness = try await Harness.make(
            baseConfig + "\n  - { id: wide, api_key: test-key-wwwwwwwwwwww, models: [fast, other] }\nauth: { public_url: \"https://gw.example.com/\", issuer: \"https://gw.example.com\" }\n")
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/.well-known/oauth-protected-resource", method: .get) { response in
                #expect(response.status == .ok)
                let document = try json(response)
                #expect(document["resource"] == "https://gw.example.com")
                #expect(document["authorization_servers"] == ["https://gw.example.com"])
                // The authorization server's keys are not the resource's own: no jwks_uri here.
                #expect(document["jwks_uri"] == nil)
                #expect(document["scopes_supported"] == ["model:fast", "model:other"])
                #expect(document["bearer_methods_supported"] == ["header"])
            }
            try await client.execute(uri: "/.well-known/oauth-authorization-server", method: .get) { response in
                let document = try json(response)
                #expect(document["token_endpoint"] == "https://gw.example.com/oauth/token")
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("not-a-key-at-all-000"), body: chat()) { response in
                #expect(response.status == .unauthorized)
                let challenge = response.headers[.wwwAuthenticate] ?? ""
                #expect(challenge.contains(#"resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource""#))
                #expect(challenge.contains(#"error="invalid_token""#) && challenge.contains("error_description="))
            }
            // A token whose scope is narrower than the agent's grants opens only that scope.
            let (headers, body) = tokenRequest("grant_type=client_credentials&client_id=wide&client_secret=test-key-wwwwwwwwwwww&scope=model%3Afast")
            var narrow = ""
            try await client.execute(uri: "/oauth/token", method: .post, headers: headers, body: body) { response in
                narrow = try json(response)["access_token"]?.stringValue ?? ""
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(narrow), body: chat("fast")) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(narrow), body: chat("other")) { response in
                #expect(response.status == .forbidden)
                let answer = try json(response)
                #expect(answer["error"]?["code"] == "insufficient_scope")
                #expect(response.headers[.wwwAuthenticate]?.contains(#"error="insufficient_scope""#) == true)
            }
            try await client.execute(uri: "/v1/models", method: .get, headers: auth(narrow)) { response in
                let answer = try json(response)
                #expect(answer["data"]?.arrayValue?.compactMap { $0["id"]?.stringValue } == ["fast"])
            }
        }
        try await harness.close()
    }
}

enum TokenServiceTestSupport {
    static func decodeSegment(_ token: String, _ index: Int) -> [UInt8] {
        let segment = token.split(separator: ".", omittingEmptySubsequences: false)[index]
        var base64 = segment.replacing("-", with: "+").replacing("_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        return Array(Data(base64Encoded: String(base64)) ?? Data())
    }

    static func encodeSegment(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacing("+", with: "-").replacing("/", with: "_").replacing("=", with: "")
    }

}

@Suite struct SigningKeyTests {
    @Test func rotationKeepsOldTokensValidUntilTheyExpire() async throws {
        let harness = try await Harness.make(baseConfig + """

            operators:
              - { id: alice, token: op-admin-token-0000000001, role: admin }
            """)
        let tokens = try #require(harness.services.gateway.governor.tokens)
        let agent = try #require(harness.services.gateway.governor.registry.entry(id: "a")?.agent)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let before = try await tokens.issue(for: agent, scopes: ["model:fast"], nowMs: now)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/admin/v1/signing-keys/rotate", method: .post, headers: [.authorization: "Bearer op-admin-token-0000000001"]) { response in
                #expect(response.status == .created)
            }
            try await client.execute(uri: "/.well-known/jwks.json", method: .get) { response in
                let keys = try JSONParser.parse(Array(response.body.readableBytesView))["keys"]?.arrayValue ?? []
                #expect(keys.count == 2)
            }
            // The token signed before the rotation still opens the gateway.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(before), body: chat()) { response in
                #expect(response.status == .ok)
            }
        }
        let after = try await tokens.issue(for: agent, scopes: ["model:fast"], nowMs: now)
        let kidBefore = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(before, 0))["kid"]
        let kidAfter = try JSONParser.parse(TokenServiceTestSupport.decodeSegment(after, 0))["kid"]
        #expect(kidBefore != kidAfter)
        // Once every token of the old key has expired, it is no longer published.
        let window = Int64(tokens.settings.tokenTTLSeconds + tokens.settings.leewaySeconds) * 1000
        #expect(tokens.jwks(nowMs: governor(harness).nowMs() + window + 60_000)["keys"]?.arrayValue?.count == 1)
        // A key older than the rotation period is replaced when the next token is issued.
        let later = try await tokens.issue(for: agent, scopes: [], nowMs: now + 31 * 86_400_000)
        #expect(try JSONParser.parse(TokenServiceTestSupport.decodeSegment(later, 0))["kid"] != kidAfter)
        #expect(try await harness.services.store.signingKeys().count >= 2)
        try await harness.close()
    }

    func governor(_ harness: Harness) -> CallGovernor { harness.services.gateway.governor }

    @Test func signingKeysAreSealedAtRestWhenASecretIsSet() async throws {
        let store = try await SQLiteStore.open(path: ":memory:")
        try await store.migrate()
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        // A store made without a secret keeps its key in the clear …
        _ = try await TokenService.open(store: store, settings: AuthSettings(), nowMs: now)
        #expect(try await store.signingKeys().first?.privateKeyPEM.hasPrefix("-----BEGIN") == true)
        // … until a secret is configured: then it is sealed on start.
        var sealed = AuthSettings()
        sealed.signingKeySecret = Secret("a-secret-of-at-least-thirty-two-characters")
        let service = try await TokenService.open(store: store, settings: sealed, nowMs: now)
        let stored = try #require(try await store.signingKeys().first)
        #expect(stored.privateKeyPEM.hasPrefix("sealed:v1:") && !stored.privateKeyPEM.contains("PRIVATE KEY"))
        var agent = Agent(id: "a")
        agent.grants.models = ["fast"]
        let token = try await service.issue(for: agent, scopes: [], nowMs: now)
        #expect(try await service.verify(token, nowMs: now).subject == .agent("a"))
        // Without the secret, or with another one, the node refuses to start, saying why.
        await #expect(throws: (any Error).self) { _ = try await TokenService.open(store: store, settings: AuthSettings(), nowMs: now) }
        var wrong = AuthSettings()
        wrong.signingKeySecret = Secret("another-secret-of-thirty-two-characters!!")
        do {
            _ = try await TokenService.open(store: store, settings: wrong, nowMs: now)
            Issue.record("opened with the wrong secret")
        } catch {
            #expect("\(error)".contains("cannot be opened"))
        }
        try await store.close()
    }
}
