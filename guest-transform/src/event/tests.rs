use super::*;

const SAMPLE: &str = r#"{"restaurant_id": "123e4567-e89b-12d3-a456-426614174000","adv_campaign_id": "123e4567-e89b-12d3-a456-426614174003","adv_campaign_content": "first campaign","adv_campaign_owner": "Ivanov Ivan Ivanovich","adv_campaign_owner_contact": "iiivanov@restaurant.ru","adv_campaign_datetime_start": 1678615562,"adv_campaign_datetime_end": 2659207116,"datetime_created": 1678879362}"#;

const STRING_FIELDS: [&str; 5] = [
    "restaurant_id",
    "adv_campaign_id",
    "adv_campaign_content",
    "adv_campaign_owner",
    "adv_campaign_owner_contact",
];
const INTEGER_FIELDS: [&str; 3] = [
    "adv_campaign_datetime_start",
    "adv_campaign_datetime_end",
    "datetime_created",
];

/// The sample event with `field` replaced by the raw JSON `replacement` (or removed if `None`).
fn sample_with(field: &str, replacement: Option<&str>) -> String {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(SAMPLE).unwrap();
    object.remove(field);
    let mut text = serde_json::to_string(&object).unwrap();
    if let Some(raw) = replacement {
        text.pop(); // the closing brace
        text.push_str(&format!(r#","{field}":{raw}}}"#));
    }
    text
}

fn parse(text: &str) -> Result<Campaign, BadEvent> {
    parse_campaign(text.as_bytes())
}

#[test]
fn parses_the_users_sample_event() {
    assert_eq!(
        parse(SAMPLE),
        Ok(Campaign {
            restaurant_id: "123e4567-e89b-12d3-a456-426614174000".into(),
            adv_campaign_id: "123e4567-e89b-12d3-a456-426614174003".into(),
            adv_campaign_content: "first campaign".into(),
            adv_campaign_owner: "Ivanov Ivan Ivanovich".into(),
            adv_campaign_owner_contact: "iiivanov@restaurant.ru".into(),
            adv_campaign_datetime_start: 1678615562,
            adv_campaign_datetime_end: 2659207116,
            datetime_created: 1678879362,
        })
    );
}

#[test]
fn rejects_values_that_are_not_json() {
    for value in [
        &b"not json"[..],
        b"",
        b"{\"restaurant_id\": ",
        b"\xff\xfe{}",
    ] {
        match parse_campaign(value) {
            Err(BadEvent::NotJson(_)) => {}
            other => panic!("{value:?}: expected NotJson, got {other:?}"),
        }
    }
}

#[test]
fn rejects_json_that_is_not_an_object() {
    let cases = [
        ("[1, 2]", JsonKind::Array),
        ("\"text\"", JsonKind::String),
        ("42", JsonKind::Number),
        ("null", JsonKind::Null),
        ("true", JsonKind::Bool),
    ];
    for (text, kind) in cases {
        assert_eq!(parse(text), Err(BadEvent::NotAnObject(kind)), "{text}");
    }
}

#[test]
fn rejects_each_missing_field_by_name() {
    for field in STRING_FIELDS.iter().chain(&INTEGER_FIELDS) {
        assert_eq!(
            parse(&sample_with(field, None)),
            Err(BadEvent::Missing(field))
        );
    }
}

#[test]
fn rejects_each_null_field_by_name() {
    for field in STRING_FIELDS.iter().chain(&INTEGER_FIELDS) {
        assert_eq!(
            parse(&sample_with(field, Some("null"))),
            Err(BadEvent::Null(field))
        );
    }
}

#[test]
fn rejects_string_fields_of_another_type() {
    for field in STRING_FIELDS {
        for (raw, found) in [
            ("17", JsonKind::Number),
            ("true", JsonKind::Bool),
            ("[\"a\"]", JsonKind::Array),
            ("{\"a\":1}", JsonKind::Object),
        ] {
            assert_eq!(
                parse(&sample_with(field, Some(raw))),
                Err(BadEvent::WrongType {
                    field,
                    expected: JsonKind::String,
                    found
                }),
                "{field} = {raw}"
            );
        }
    }
}

#[test]
fn rejects_integer_fields_that_are_not_integers() {
    for field in INTEGER_FIELDS {
        for (raw, found) in [
            ("\"1678615562\"", JsonKind::String),
            ("false", JsonKind::Bool),
            ("[1]", JsonKind::Array),
        ] {
            assert_eq!(
                parse(&sample_with(field, Some(raw))),
                Err(BadEvent::WrongType {
                    field,
                    expected: JsonKind::Integer,
                    found
                }),
                "{field} = {raw}"
            );
        }
        for raw in ["1678615562.0", "1.5", "1e9", "2E3"] {
            assert_eq!(
                parse(&sample_with(field, Some(raw))),
                Err(BadEvent::NotAnInteger {
                    field,
                    text: raw.into()
                }),
                "{field} = {raw}"
            );
        }
    }
}

#[test]
fn rejects_integers_out_of_range() {
    for field in INTEGER_FIELDS {
        for raw in [
            "9223372036854775808",
            "100000000000000000000000000000",
            "-1",
            "-9223372036854775809",
        ] {
            assert_eq!(
                parse(&sample_with(field, Some(raw))),
                Err(BadEvent::OutOfRange {
                    field,
                    text: raw.into()
                }),
                "{field} = {raw}"
            );
        }
    }
}

#[test]
fn accepts_the_extremes_of_the_range() {
    let event = format!(
        r#"{{"restaurant_id":"r","adv_campaign_id":"c","adv_campaign_content":"","adv_campaign_owner":"","adv_campaign_owner_contact":"","adv_campaign_datetime_start":0,"adv_campaign_datetime_end":{max},"datetime_created":{max}}}"#,
        max = i64::MAX
    );
    let campaign = parse(&event).unwrap();
    assert_eq!(campaign.adv_campaign_datetime_start, 0);
    assert_eq!(campaign.adv_campaign_datetime_end, i64::MAX);
}

#[test]
fn rejects_a_start_after_the_end_but_accepts_equal_bounds() {
    let after = sample_with("adv_campaign_datetime_start", Some("2659207117"));
    assert_eq!(
        parse(&after),
        Err(BadEvent::StartAfterEnd {
            start: 2659207117,
            end: 2659207116
        })
    );
    let equal = sample_with("adv_campaign_datetime_start", Some("2659207116"));
    assert!(parse(&equal).is_ok());
}

#[test]
fn ignores_unknown_fields_of_any_shape() {
    let text = SAMPLE.replacen(
        '{',
        r#"{"extra": {"nested": [1, null]}, "feedback": "x", "id": 7, "#,
        1,
    );
    assert_eq!(parse(&text), parse(SAMPLE));
}

#[test]
fn rejects_a_repeated_field() {
    let text = SAMPLE.replacen('{', r#"{"adv_campaign_id": "other", "#, 1);
    match parse(&text) {
        Err(BadEvent::InvalidObject(message)) => assert!(message.contains("duplicate field")),
        other => panic!("expected InvalidObject, got {other:?}"),
    }
}

#[test]
fn decodes_escapes_in_strings() {
    let text = sample_with(
        "adv_campaign_content",
        Some(r#""\"50%\" \u043e\u0444\u0444\n""#),
    );
    assert_eq!(parse(&text).unwrap().adv_campaign_content, "\"50%\" офф\n");
}

#[test]
fn reasons_name_the_field_and_the_problem() {
    let cases = [
        (
            BadEvent::Missing("restaurant_id"),
            "field `restaurant_id` is missing",
        ),
        (
            BadEvent::Null("datetime_created"),
            "field `datetime_created` is null",
        ),
        (
            BadEvent::WrongType {
                field: "adv_campaign_datetime_end",
                expected: JsonKind::Integer,
                found: JsonKind::String,
            },
            "field `adv_campaign_datetime_end` must be an integer, got a string",
        ),
        (
            BadEvent::NotAnObject(JsonKind::Array),
            "not a JSON object: got an array",
        ),
    ];
    for (bad, reason) in cases {
        assert_eq!(bad.to_string(), reason);
    }
}

#[test]
fn rejects_a_nul_character_in_every_string_field() {
    for field in STRING_FIELDS {
        let text = sample_with(field, Some(r#""before\u0000after""#));
        assert_eq!(parse(&text), Err(BadEvent::NulCharacter(field)), "{field}");
    }
}

#[test]
fn rejects_ids_too_long_for_an_index_and_accepts_the_longest_allowed() {
    for field in ["restaurant_id", "adv_campaign_id"] {
        let longest = format!("\"{}\"", "i".repeat(MAX_ID_BYTES));
        assert!(
            parse(&sample_with(field, Some(&longest))).is_ok(),
            "{field}"
        );
        let too_long = format!("\"{}\"", "é".repeat(1500));
        assert_eq!(
            parse(&sample_with(field, Some(&too_long))),
            Err(BadEvent::IdTooLong { field, bytes: 3000 }),
            "{field}"
        );
    }
    // Content is not an id: a long offer is fine.
    let long_content = format!("\"{}\"", "x".repeat(100_000));
    assert!(parse(&sample_with("adv_campaign_content", Some(&long_content))).is_ok());
}
