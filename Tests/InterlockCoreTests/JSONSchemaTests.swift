import InterlockCore
import Testing

@Suite struct JSONSchemaTests {
    let weather: JSONValue = [
        "type": "object",
        "properties": [
            "city": ["type": "string", "description": "the city name", "minLength": 1],
            "unit": ["type": "string", "enum": ["celsius", "fahrenheit"]],
            "days": ["type": "integer", "minimum": 1, "maximum": 14],
            "tags": ["type": "array", "items": ["type": "string"], "maxItems": 3, "uniqueItems": true],
            "at": ["$ref": "#/$defs/point"],
        ],
        "required": ["city"],
        "additionalProperties": false,
        "$defs": ["point": ["type": "object", "properties": ["lat": ["type": "number"], "lon": ["type": "number"]], "required": ["lat", "lon"]]],
    ]

    func messages(_ schema: JSONValue, _ value: JSONValue) throws -> [String] {
        try JSONSchema(schema).validate(value).map(\.description)
    }

    @Test func conformingArgumentsPass() throws {
        #expect(try messages(weather, ["city": "Paris"]).isEmpty)
        #expect(try messages(weather, ["city": "Oslo", "unit": "celsius", "days": 3, "tags": ["a", "b"], "at": ["lat": 59.9, "lon": 10.7]]).isEmpty)
        // 3.0 is an integer in JSON.
        #expect(try messages(weather, ["city": "Oslo", "days": 3.0]).isEmpty)
    }

    @Test func violationsNameTheParameterAndWhatWasExpected() throws {
        #expect(try messages(weather, [:]) == ["'city' is required (a string: the city name) but missing"])
        #expect(try messages(weather, ["city": 5]) == ["'city' must be a string (the city name), got 5"])
        #expect(try messages(weather, ["city": "Rome", "unit": "kelvin"]) == [#"'unit' must be one of "celsius", "fahrenheit", got "kelvin""#])
        #expect(try messages(weather, ["city": "Rome", "days": 30]) == ["'days' must be at most 14, got 30"])
        #expect(try messages(weather, ["city": "Rome", "days": 2.5]) == ["'days' must be an integer, got 2.5"])
        #expect(try messages(weather, ["city": "Rome", "cty": "x"]) == ["'cty' is not a parameter of this tool; known parameters: city, unit, days, tags, at"])
        #expect(try messages(weather, ["city": "Rome", "tags": ["a", "a"]]) == ["'tags[1]' repeats an earlier item; items must be unique"])
        #expect(try messages(weather, ["city": "Rome", "tags": ["a", 1]]) == ["'tags[1]' must be a string, got 1"])
        #expect(try messages(weather, ["city": "Rome", "at": ["lat": 1]]) == ["'at.lon' is required (a number) but missing"])
        #expect(try messages(weather, ["city": ""]) == [#"'city' must be at least 1 characters long, got 0"#])
        // Every problem at once, so a model can fix them in one go.
        #expect(try messages(weather, ["unit": "kelvin", "days": 0]).count == 3)
        #expect(try messages(weather, "Paris") == [#"must be an object, got "Paris""#])
    }

    @Test func combinatorsPatternsAndNullable() throws {
        let schema: JSONValue = [
            "type": "object",
            "properties": [
                "id": ["type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"],
                "amount": ["oneOf": [["type": "integer"], ["type": "string", "pattern": "^[0-9]+$"]]],
                "note": ["type": "string", "nullable": true],
                "mode": ["anyOf": [["const": "fast"], ["const": "safe"]]],
                "ratio": ["type": "number", "exclusiveMinimum": 0, "multipleOf": 0.25],
                "other": ["not": ["type": "null"]],
            ],
        ]
        #expect(try messages(schema, ["id": "ABC-12", "amount": 5, "note": nil, "mode": "safe", "ratio": 0.75, "other": 1]).isEmpty)
        #expect(try messages(schema, ["id": "abc"]) == [#"'id' must match the pattern ^[A-Z]{3}-[0-9]+$, got "abc""#])
        #expect(try messages(schema, ["amount": 1.5]) == ["'amount' does not match any of the 2 allowed forms"])
        #expect(try messages(schema, ["mode": "slow"]) == ["'mode' does not match any of the 2 allowed forms"])
        #expect(try messages(schema, ["ratio": 0]) == ["'ratio' must be greater than 0, got 0"])
        #expect(try messages(schema, ["ratio": 0.3]) == ["'ratio' must be a multiple of 0.25"])
        #expect(try messages(schema, ["other": nil]) == ["'other' must not match the excluded form"])
        // ECMA-262 classes: \d is an ASCII digit.
        #expect(try messages(["type": "string", "pattern": "^\\d+$"], "١٢٣") == [#"must match the pattern ^\d+$, got "١٢٣""#])
        // Keys matched by patternProperties are not "additional".
        let tagged: JSONValue = ["type": "object", "patternProperties": ["^x-": ["type": "string"]], "additionalProperties": false]
        #expect(try messages(tagged, ["x-team": "a"]).isEmpty)
        #expect(try messages(tagged, ["x-team": 1]) == ["'x-team' must be a string, got 1"])
    }

    @Test func brokenSchemasAreRefusedWithTheirPath() {
        func failure(_ schema: JSONValue) -> String? {
            do {
                _ = try JSONSchema(schema)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(failure(["type": "strnig"]) == "type: unknown type 'strnig'")
        #expect(failure(["properties": ["a": 5]]) == "properties.a: a schema must be an object or a boolean, found number")
        #expect(failure(["properties": ["a": ["pattern": "(["]]]) == "properties.a.pattern: is not a valid regular expression")
        #expect(failure(["$ref": "#/$defs/missing"])?.contains("points nowhere") == true)
        #expect(failure(["$ref": "https://example.com/schema"])?.contains("only local references") == true)
        #expect(failure(["minLength": -1]) == "minLength: must be a non-negative integer")
    }
}
