"""The session's user comes back with their roles in one query, with ModelBackend's rules."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from core.auth import RoleLoadingBackend
from core.roles import Role, user_roles
from tests.factories import UserFactory


@pytest.mark.django_db
def test_get_user_loads_the_roles_in_the_same_query(roles, django_assert_num_queries):
    both = UserFactory(username="both", roles=[Role.ANNOTATOR, Role.REVIEWER])
    with django_assert_num_queries(1):
        user = RoleLoadingBackend().get_user(both.pk)
        assert user_roles(user) == {Role.ANNOTATOR, Role.REVIEWER}
    assert user == both
    assert user.date_joined == both.date_joined  # values went through the field converters


@pytest.mark.django_db
def test_a_user_without_groups_has_no_roles_and_a_superuser_is_admin(roles, nobody, admin_user):
    backend = RoleLoadingBackend()
    assert user_roles(backend.get_user(nobody.pk)) == frozenset()
    assert Role.ADMIN in user_roles(backend.get_user(admin_user.pk))


@pytest.mark.django_db
def test_inactive_unknown_or_malformed_ids_give_nobody(roles, annotator):
    backend = RoleLoadingBackend()
    get_user_model().objects.filter(pk=annotator.pk).update(is_active=False)
    assert backend.get_user(annotator.pk) is None
    assert backend.get_user(annotator.pk + 1000) is None
    assert backend.get_user("not-a-number") is None


@pytest.mark.django_db
def test_a_role_taken_away_applies_on_the_next_request(client, annotator):
    client.force_login(annotator)
    assert client.get(reverse("feedback:history")).status_code == 200
    annotator.groups.clear()
    assert client.get(reverse("feedback:history")).status_code == 403
