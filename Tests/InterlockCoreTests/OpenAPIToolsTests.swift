import InterlockCore
import Testing

@Suite struct OpenAPIToolsTests {
    let document: JSONValue = [
        "openapi": "3.1.0",
        "info": ["title": "Weather", "version": "1"],
        "paths": [
            "/forecast/{city}": [
                "parameters": [["name": "city", "in": "path", "required": true, "schema": ["type": "string"], "description": "city name"]],
                "get": [
                    "operationId": "getForecast", "summary": "The forecast for a city.",
                    "parameters": [
                        ["name": "days", "in": "query", "schema": ["type": "integer", "minimum": 1, "maximum": 14]],
                        ["name": "X-Units", "in": "header", "schema": ["$ref": "#/components/schemas/Units"]],
                    ],
                    "responses": ["200": ["description": "ok", "content": ["application/json": ["schema": ["$ref": "#/components/schemas/Forecast"]]]]],
                ],
            ],
            "/alerts": [
                "post": [
                    "operationId": "createAlert",
                    "requestBody": ["required": true, "content": ["application/json": ["schema": ["$ref": "#/components/schemas/Alert"]]]],
                    "responses": ["201": ["description": "created"]],
                ],
                "get": ["summary": "no operationId: not a tool", "responses": ["200": ["description": "ok"]]],
            ],
            "/notes": [
                "put": [
                    "operationId": "putNotes",
                    "requestBody": ["content": ["application/json": ["schema": ["type": "array", "items": ["type": "string"]]]]],
                    "responses": ["204": ["description": "ok"]],
                ],
            ],
        ],
        "components": [
            "schemas": [
                "Units": ["type": "string", "enum": ["metric", "imperial"]],
                "Forecast": ["type": "object", "properties": ["high": ["type": "number"]]],
                "Alert": ["type": "object", "properties": ["city": ["type": "string"], "level": ["type": "integer"]], "required": ["level"]],
            ],
        ],
    ]

    @Test func operationsBecomeToolsWithJoinedSchemas() throws {
        let tools = try OpenAPIImport.tools(from: document, namespace: "weather")
        #expect(tools.map(\.definition.name) == ["weather.createAlert", "weather.getForecast", "weather.putNotes"])

        let forecast = try #require(tools.first { $0.definition.name == "weather.getForecast" })
        let schema = try JSONSchema(forecast.definition.inputSchema)
        #expect(schema.validate(["city": "Oslo", "days": 3, "X-Units": "metric"]).isEmpty)
        #expect(schema.validate(["days": 3]).map(\.description) == ["'city' is required (a string: city name) but missing"])
        #expect(schema.validate(["city": "Oslo", "X-Units": "kelvin"]).map(\.description) == [#"'X-Units' must be one of "metric", "imperial", got "kelvin""#])
        #expect(forecast.definition.description == "The forecast for a city.")
        #expect(forecast.definition.outputSchema?["properties"]?["high"]?["type"] == "number")

        let request = forecast.operation.request(arguments: ["city": "São Paulo", "days": 3, "X-Units": "metric"])
        #expect(forecast.operation.method == "GET")
        #expect(request.path == "/forecast/S%C3%A3o%20Paulo?days=3")
        #expect(request.headers.map { "\($0.0)=\($0.1)" } == ["X-Units=metric"])
        #expect(request.body == nil)
        // A path argument cannot climb out of its operation.
        #expect(forecast.operation.request(arguments: ["city": ".."]).path == "/forecast/%2E%2E")

        // An object body's properties join the arguments; the body is rebuilt from them.
        let alert = try #require(tools.first { $0.definition.name == "weather.createAlert" })
        #expect(try JSONSchema(alert.definition.inputSchema).validate(["city": "Oslo"]).map(\.description) == ["'level' is required (an integer) but missing"])
        #expect(alert.operation.request(arguments: ["city": "Oslo", "level": 2]).body == ["city": "Oslo", "level": 2])

        // A body that is not an object is the argument `body`.
        let notes = try #require(tools.first { $0.definition.name == "weather.putNotes" })
        #expect(notes.definition.inputSchema["properties"]?["body"]?["type"] == "array")
        #expect(notes.operation.request(arguments: ["body": ["a", "b"]]).body == ["a", "b"])
        // Tools are offered to models as OpenAI functions too.
        #expect(notes.definition.catalogEntry["openai"]?["function"]?["name"] == "weather__putNotes")
    }

    @Test func brokenDocumentsSayWhere() {
        func failure(_ document: JSONValue) -> String? {
            do {
                _ = try OpenAPIImport.tools(from: document, namespace: "x")
                return nil
            } catch {
                return error.description
            }
        }
        #expect(failure(["swagger": "2.0"])?.contains("OpenAPI 3") == true)
        #expect(failure(["openapi": "3.0.3", "paths": ["/a": ["get": ["operationId": "a", "parameters": [["$ref": "#/components/parameters/nope"]]]]]])?.contains("points nowhere") == true)
        #expect(failure(["openapi": "3.0.3", "paths": ["/a": ["get": ["operationId": "a"]], "/b": ["get": ["operationId": "a"]]]])?.contains("used twice") == true)
    }
}
