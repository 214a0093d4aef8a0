use super::*;

#[test]
fn truncate_cuts_on_a_character_boundary() {
    assert_eq!(truncate("héllo".to_owned(), 2), "h");
    assert_eq!(truncate("abc".to_owned(), 5), "abc");
}

#[test]
fn worlds_round_trip_their_stored_names() {
    for world in [World::Authorizer, World::CredentialInjector] {
        assert_eq!(World::parse(world.as_str()), Some(world));
    }
    assert_eq!(World::parse("command"), None);
}
