"""Answers are data (issue 12): the ``view_entry_content`` permission guards an entry's content in
the admin, and each view of it is audited (action ``view_entry``)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("respcache", "0002_lock_liveness_defaults"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="workload",
            options={
                "ordering": ("slug",),
                "permissions": [
                    ("bump_workload", "Can bump a workload's key version"),
                    ("purge_workload", "Can purge a workload's entries"),
                    ("view_entry_content", "Can read cached answers"),
                ],
                "verbose_name": "workload",
                "verbose_name_plural": "workloads",
            },
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="action",
            field=models.CharField(
                choices=[
                    ("create", "create"),
                    ("bump", "bump key version"),
                    ("purge", "purge entries"),
                    ("enable", "enable"),
                    ("disable", "disable"),
                    ("edit", "edit policy"),
                    ("delete_entry", "delete entry"),
                    ("view_entry", "view entry content"),
                ],
                max_length=20,
                verbose_name="action",
            ),
        ),
    ]
